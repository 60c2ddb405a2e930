"""Sequential fine-tuning: histories -> next item, retrieval loss against item-tower outputs.

Writes into OUT: `best/` (a DualTower checkpoint chosen on validation NDCG@10),
`last/` (resumable state), `metrics.jsonl` (one line per epoch), `valid.json`,
`test.json` and `train_config.json`. Runs alone or under torchrun (DDP);
`batch_size` is the global batch, split evenly over processes.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dtrec.config import FinetuneConfig, resolve_negatives
from dtrec.data.catalog import Dataset
from dtrec.features import Features, load_features
from dtrec.model.losses import candidate_set, item_log_frequency, retrieval_loss
from dtrec.model.tower import DualTower
from dtrec.train import distributed as D
from dtrec.train.batching import BatchPlan, Collator, build_examples
from dtrec.train.checkpoint import (
    init_from,
    load_training_state,
    merge_init_config,
    optimizer_step,
    save_training_state,
    set_rng_state,
    write_run_record,
)


class FinetuneObjective(nn.Module):
    """The training forward pass as one module, so DDP sees every parameter it uses."""

    def __init__(self, model: DualTower, table: Features, negatives: str = "all", num_negatives: int = 1024,
                 item_log_freq: Tensor | None = None, held_out: Tensor | None = None):
        super().__init__()
        self.model = model
        # A plain attribute, not a buffer: DDP would otherwise broadcast the whole table every step.
        self.table = table
        self.negatives = negatives
        self.num_negatives = num_negatives
        self.item_log_freq = item_log_freq
        self.held_out = held_out  # (N,) bool: the cold-start items, never candidates in training

    def forward(self, items: Tensor, padding: Tensor, masked: Tensor | None, targets: Tensor) -> Tensor:
        """Mean retrieval loss over every position with a target."""
        model, table = self.model, self.table
        h = model.encode_sequences(items, padding, table, masked)
        queries = h.reshape(-1, h.shape[-1])
        flat_t = targets.reshape(-1)
        cand, labels, log_q, exclude = candidate_set(flat_t, len(table), self.negatives, self.num_negatives,
                                                     self.item_log_freq, held_out=self.held_out)
        if self.negatives == "all":
            # The reference re-encodes the whole catalog every step: both sides stay at one feature level.
            item_emb = model.encode_items(table.values, table.present)
        else:
            item_emb = model.encode_items({m: table.values[m][cand] for m in model.modalities},
                                          {m: table.present[m][cand] for m in model.modalities})
        return retrieval_loss(queries, labels, item_emb, model.config.temperature, log_q, exclude)


def finetune_step(trainer: nn.Module, model: DualTower, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
                  device: torch.device, *, amp: bool, grad_clip: float | None) -> Tensor:
    """One fine-tuning update on a collated batch: to `device`, the objective (bf16 autocast if `amp`), then the step.

    `trainer` is the `FinetuneObjective` (or its DDP / compiled wrapper); returns the loss."""
    items = batch["items"].to(device, non_blocking=True)
    padding = batch["padding"].to(device, non_blocking=True)
    masked = batch["masked"].to(device, non_blocking=True) if batch["masked"] is not None else None
    targets = batch["targets"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss = trainer(items, padding, masked, targets)
    optimizer_step(model, optimizer, loss, grad_clip)
    return loss


def evaluate_model(model: DualTower, features: Features, cases: list, batch_size: int = 256) -> dict[str, float]:
    """Full-ranking metrics of `model` on `(history, target)` cases (eval mode, no grad)."""
    from dtrec.eval import evaluate

    was_training = model.training
    model.eval()
    with torch.no_grad():
        items = model.item_embeddings(features)

        def score(histories: list[list[int]]) -> Tensor:
            return model.user_embeddings(histories, features) @ items.T

        out = evaluate(score, cases, batch_size=batch_size)
    model.train(was_training)
    return out


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def finetune(
    dataset: Dataset,
    features: Features,
    config: FinetuneConfig,
    out: str | Path,
    init: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    record: dict | None = None,
) -> dict[str, Any]:
    """Train a DualTower on `dataset`'s training sequences; returns best valid (and test) metrics."""
    out = Path(out)
    info = D.setup(config.device)
    try:
        return _finetune(dataset, features, config, out, init, resume, progress, record or {}, info)
    finally:
        D.teardown(info)


def _finetune(dataset: Dataset, features: Features, config: FinetuneConfig, out: Path, init, resume: bool,
              progress: bool, record: dict, info: D.DistInfo) -> dict[str, Any]:
    if len(features) != len(dataset.catalog):
        raise ValueError(f"features hold {len(features)} items but the catalog has {len(dataset.catalog)}")
    if config.batch_size % info.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {info.world_size} processes")
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = info.device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    if config.modalities:
        features = features.select(m.strip() for m in config.modalities.split(",") if m.strip())
    model_cfg = dataclasses.replace(config.model, encoder=features.encoder, modality_dims=features.dims)
    if init is not None:
        model_cfg = merge_init_config(model_cfg, init)
    # The resolved choice is what train_config.json records, so a rerun does not depend on "auto".
    config = dataclasses.replace(config, model=model_cfg, negatives=resolve_negatives(config.negatives, len(features)))
    model = DualTower(model_cfg).to(device)
    if init is None:  # a pretrained model brings the statistics it was trained with
        model.fit_feature_norm(features, exclude=dataset.cold_items)
    init_notes = init_from(model, init) if init is not None else []
    model.check_features(features)
    table = features.to(device)

    seqs = dataset.train_sequences()
    examples = build_examples(seqs, model_cfg.objective, model_cfg.max_len)
    if not examples:
        raise ValueError("no training sequence has two items: nothing to learn from")
    log_freq = item_log_frequency(seqs, len(features)).to(device) if config.negatives != "all" else None
    held_out = None
    if dataset.cold_items:  # held out of all training data: not even as negatives
        held_out = torch.zeros(len(features), dtype=torch.bool, device=device)
        held_out[torch.as_tensor(dataset.cold_items, dtype=torch.long, device=device)] = True
    objective = FinetuneObjective(model, table, config.negatives, config.num_negatives, log_freq, held_out)
    trainer: nn.Module = objective
    if info.enabled:
        # Unused parameters exist by design (the mask token under the causal objective).
        trainer = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    sampler = BatchPlan([len(e) for e in examples], config.batch_size, group_by_length=config.group_by_length,
                        seed=config.seed, world_size=info.world_size, rank=info.rank)
    collator = Collator.for_model(model_cfg, config.seed, config.pad_multiple)
    loader = DataLoader(examples, batch_sampler=sampler, collate_fn=collator, pin_memory=device.type == "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    use_amp = config.amp and device.type == "cuda"

    start_epoch, best, best_epoch, bad, global_step = 0, float("-inf"), -1, 0, 0
    best_metrics: dict = {}
    if resume:
        state = load_training_state(out / "last", model, optimizer)
        start_epoch = int(state["epoch"]) + 1
        best, best_epoch, bad = float(state["best"]), int(state["best_epoch"]), int(state["bad_epochs"])
        global_step = int(state["global_step"])
        best_metrics = json.loads(state["best_metrics"])
        set_rng_state(state["rng"])
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_record(out, config, dataset=str(dataset.root) if dataset.root else dataset.name,
                         seed=config.seed, init=str(init) if init else None, init_notes=init_notes,
                         world_size=info.world_size, device=str(device), **record)
    valid_cases = dataset.eval_cases("valid")
    metrics_path = out / "metrics.jsonl"
    if info.is_main and not resume:
        metrics_path.unlink(missing_ok=True)  # a fresh run starts a fresh log

    for epoch in range(start_epoch, config.epochs):
        if bad >= config.patience or (config.max_steps and global_step >= config.max_steps):
            break
        sampler.set_epoch(epoch)
        collator.set_epoch(epoch, info.rank)
        model.train()
        t0 = time.perf_counter()
        total = torch.zeros((), device=device)
        steps = 0
        bar = tqdm(loader, desc=f"finetune {epoch}", unit="batch", disable=not (progress and info.is_main),
                   leave=False)
        for batch in bar:
            loss = finetune_step(trainer, model, optimizer, batch, device, amp=use_amp, grad_clip=config.grad_clip)
            total += loss.detach()
            steps += 1
            global_step += 1
            if steps % config.log_every == 0:
                bar.set_postfix(loss=f"{float(total) / steps:.4f}")  # a host sync only every log_every steps
            if config.max_steps and global_step >= config.max_steps:
                break
        epoch_loss = float(D.mean_across(total / max(steps, 1), info))
        row: dict[str, Any] = {"epoch": epoch, "loss": epoch_loss, "steps": steps,
                               "seconds": round(time.perf_counter() - t0, 3)}
        is_last = epoch == config.epochs - 1 or bool(config.max_steps and global_step >= config.max_steps)
        if (epoch + 1) % config.eval_every == 0 or is_last:
            metrics = evaluate_model(model, table, valid_cases, config.eval_batch_size) if info.is_main else None
            metrics = D.broadcast_object(metrics, info)
            row.update({f"valid_{k}": v for k, v in metrics.items()})
            if metrics["ndcg@10"] > best:
                best, best_epoch, bad, best_metrics = metrics["ndcg@10"], epoch, 0, metrics
                if info.is_main:
                    model.save_pretrained(out / "best")
            else:
                bad += 1
        row["eval_seconds"] = round(time.perf_counter() - t0 - row["seconds"], 3)
        if info.is_main:
            _append_jsonl(metrics_path, row)
            save_training_state(out / "last", model, optimizer, {
                "epoch": epoch, "best": best, "best_epoch": best_epoch, "bad_epochs": bad,
                "global_step": global_step, "best_metrics": json.dumps(best_metrics),
            })
            if progress:
                tqdm.write(f"epoch {epoch}: loss {epoch_loss:.4f}"
                           + (f", valid ndcg@10 {row['valid_ndcg@10']:.4f}" if "valid_ndcg@10" in row else ""))
        D.barrier(info)

    result: dict[str, Any] = {"best_epoch": best_epoch, "valid": best_metrics}
    if info.is_main and best_epoch >= 0:
        (out / "valid.json").write_text(json.dumps({"epoch": best_epoch, **best_metrics}, indent=2))
        if config.evaluate_test:
            best_model = DualTower.from_pretrained(str(out / "best")).to(device)
            test = evaluate_model(best_model, table, dataset.eval_cases("test"), config.eval_batch_size)
            (out / "test.json").write_text(json.dumps({"epoch": best_epoch, **test}, indent=2))
            result["test"] = test
    D.barrier(info)
    return result


def load_dataset_features(data_dir: str | Path, encoder: str) -> tuple[Dataset, Features]:
    """A prepared data set and its cached features of `encoder`."""
    dataset = Dataset.load(data_dir)
    return dataset, load_features(data_dir, encoder, dataset.catalog)
