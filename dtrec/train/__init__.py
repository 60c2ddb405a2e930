"""Training loops: pretraining over items, sequential fine-tuning, DDP and checkpoint plumbing."""
