"""Training: one loop (`loop.fit`) run by pretraining and fine-tuning; batching, DDP and checkpoint plumbing."""
