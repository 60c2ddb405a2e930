"""One training loop for every model: fine-tuning, pretraining and the SASRec baseline.

A trainer seeds (`seed_everything`), builds its model, optimizer and batches into a
`Task` and hands it to `fit`, which owns what every run shares: the epoch loop and
its progress bars, the step budget, evaluation every `eval_every` epochs with early
stopping on a validation metric, the resumable `OUT/last/` state, `OUT/metrics.jsonl`
(one row per epoch) and the run record (`OUT/train_config.json`), and the DDP hooks
(the epoch loss averaged over processes, validation on rank 0 and broadcast, files
written by rank 0, a barrier per epoch). Every update goes through `train_step`
(bf16 autocast, backward, gradient clipping, optimizer step), which the models' own
per-batch steps call (`finetune_step`, `sasrec_step`), so the benchmarks that time
those steps time the loop's update.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dtrec.train import distributed as D
from dtrec.train.checkpoint import load_training_state, save_training_state, set_rng_state, write_run_record


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (before a model is built)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, grad_clip: float | None) -> None:
    """Backward, optional gradient-norm clipping over `model`'s parameters, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, compute: Callable[[], Any], device_type: str, *,
               amp: bool, grad_clip: float | None) -> Any:
    """One update: `compute()` under bf16 autocast when `amp`, then `optimizer_step` on its loss.

    `compute` returns the loss or a tuple whose first element is the loss; `train_step` returns what it returned."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        out = compute()
    optimizer_step(model, optimizer, out[0] if isinstance(out, tuple) else out, grad_clip)
    return out


class Task:
    """What a model supplies to `fit`: its model and optimizer, its batches, its step, validation and saving."""

    name = "train"  # the progress bar's label
    model: nn.Module  # put in training mode each epoch; saved in OUT/last/ when the run is resumable
    optimizer: torch.optim.Optimizer

    def batches(self, epoch: int) -> Iterable[Any]:
        """This epoch's batches (reseeding whatever draws them, so a resumed epoch draws the same)."""
        raise NotImplementedError

    def step(self, batch: Any) -> Tensor:
        """One update on `batch` (through `train_step`); returns the loss."""
        raise NotImplementedError

    def epoch_metrics(self, steps: int) -> dict[str, float]:
        """Training-side entries of the epoch's row beyond the mean loss (every process)."""
        return {}

    def validate(self) -> dict[str, float]:
        """Validation metrics of the current model (rank 0 only)."""
        return {}

    def save_checkpoint(self) -> None:
        """Keep the current model as the run's result (rank 0 only): on a better validation metric, or every epoch
        when `fit` selects on none."""

    def extra_state(self) -> dict[str, Any]:
        """What the task draws from beyond the global RNGs (a batch generator), saved in OUT/last/ with them."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned, when a run resumes."""


@dataclass
class FitConfig:
    """How `fit` runs a task: epoch and step budget, evaluation schedule, early stopping, logging."""

    epochs: int
    max_steps: int | None = None  # stop after this many updates in all (None or 0: no budget)
    eval_every: int = 1  # validate every this many epochs and after the last one
    metric: str | None = "ndcg@10"  # validation metric to maximise; None: no selection, every epoch is kept
    patience: int | None = None  # stop after this many validations without improvement; None: never
    prefix: str = "valid_"  # in front of the validation metrics in a row
    log_every: int = 50  # steps between progress-bar loss updates (each one a host sync)
    resumable: bool = False  # write OUT/last/ after every epoch (needs `out`)
    headline: tuple[str, str, str] | None = ("valid_ndcg@10", "valid ndcg@10", ".4f")  # row key, label, format


@dataclass
class FitResult:
    """What `fit` returns: this run's epoch rows, the best validation, the updates made in all."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    global_step: int = 0


# Settings a resumed run may change: how long it goes on, where it runs and what it reports, not what it trains.
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "patience", "device", "amp", "eval_batch_size", "log_every",
                               "evaluate_test"})


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def resume_differences(saved: dict[str, Any], record: dict[str, Any],
                       allowed: frozenset[str] = RESUMABLE_CHANGES) -> list[str]:
    """The settings (`config`, and `model` where a record keeps it apart) in which `record` differs from the `saved`
    run record, beyond those in `allowed`, as "name ours (the run: theirs)"."""
    def settings(rec: dict[str, Any]) -> dict[str, Any]:
        config = rec.get("config")
        plain = {"config": asdict(config) if is_dataclass(config) else config, "model": rec.get("model")}
        return _flat(json.loads(json.dumps({k: v for k, v in plain.items() if v is not None}, default=str)))

    ours, theirs = settings(record), settings(saved)
    # A setting only one side knows (a run recorded before the code had it) is not compared.
    return [f"{k.split('.', 1)[1]} {ours[k]!r} (the run: {theirs[k]!r})" for k in sorted(ours.keys() & theirs.keys())
            if k.rsplit(".", 1)[-1] not in allowed and ours[k] != theirs[k]]


def check_resumable(out: Path, record: dict[str, Any]) -> None:
    """Refuse, in one sentence, to resume the run in `out` with settings it was not started with."""
    path = out / "train_config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {out} holds no run to resume")
    differ = resume_differences(json.loads(path.read_text()), record)
    if differ:
        raise ValueError(f"cannot resume {out} with other settings: {', '.join(differ)}")


def fit(task: Task, config: FitConfig, *, out: str | Path | None = None, info: D.DistInfo | None = None,
        resume: bool = False, progress: bool = True, record: dict[str, Any] | None = None) -> FitResult:
    """Train `task` for `config.epochs` epochs; with `out`, write metrics.jsonl (and `record` as train_config.json,
    `record["config"]` being the run's config) and, when resumable, OUT/last/ (which `resume` continues from)."""
    info = info or D.DistInfo()
    out = Path(out) if out is not None else None
    if (resume or config.resumable) and out is None:
        raise ValueError("a resumable run needs an output folder")
    res = FitResult()
    best, bad, start_epoch = -math.inf, 0, 0
    if resume and record is not None:
        check_resumable(out, record)
    if resume:
        state = load_training_state(out / "last", task.model, task.optimizer)
        start_epoch = int(state["epoch"]) + 1
        best, res.best_epoch, bad = float(state["best"]), int(state["best_epoch"]), int(state["bad_epochs"])
        res.global_step = int(state["global_step"])
        res.best_metrics = json.loads(state["best_metrics"])
        set_rng_state(state["rng"])
        task.load_extra_state(state.get("task", {}))
    metrics_path = out / "metrics.jsonl" if out is not None else None
    if info.is_main and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if record is not None:
            write_run_record(out, **record, resumed=resume)
        if not resume:
            metrics_path.unlink(missing_ok=True)  # a fresh run starts a fresh log

    budget = config.max_steps or 0
    for epoch in range(start_epoch, config.epochs):
        # patience 0 still needs one validation without improvement to stop
        if (config.patience is not None and bad and bad >= config.patience) or (budget and res.global_step >= budget):
            break
        batches = task.batches(epoch)
        task.model.train()
        t0 = time.perf_counter()
        total = torch.zeros((), device=info.device)
        steps = 0
        bar = tqdm(batches, desc=f"{task.name} {epoch}", unit="batch", disable=not (progress and info.is_main),
                   leave=False)
        for batch in bar:
            loss = task.step(batch)
            total += loss.detach()
            steps += 1
            res.global_step += 1
            if steps % config.log_every == 0:
                bar.set_postfix(loss=f"{float(total) / steps:.4f}")  # a host sync only every log_every steps
            if budget and res.global_step >= budget:
                break
        row: dict[str, Any] = {"epoch": epoch, "loss": float(D.mean_across(total / max(steps, 1), info)),
                               "steps": steps, "seconds": round(time.perf_counter() - t0, 3)}
        row.update(task.epoch_metrics(steps))
        is_last = epoch == config.epochs - 1 or bool(budget and res.global_step >= budget)
        if (epoch + 1) % config.eval_every == 0 or is_last:
            metrics = D.broadcast_object(task.validate() if info.is_main else None, info)
            row.update({f"{config.prefix}{k}": v for k, v in metrics.items()})
            if config.metric is not None:
                if metrics[config.metric] > best:
                    best, res.best_epoch, bad, res.best_metrics = metrics[config.metric], epoch, 0, metrics
                    if info.is_main:
                        task.save_checkpoint()
                else:
                    bad += 1
        if config.metric is None and info.is_main:
            task.save_checkpoint()
        row["eval_seconds"] = round(time.perf_counter() - t0 - row["seconds"], 3)
        res.rows.append(row)
        if info.is_main:
            if metrics_path is not None:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            if config.resumable:
                save_training_state(out / "last", task.model, task.optimizer, {
                    "epoch": epoch, "best": best, "best_epoch": res.best_epoch, "bad_epochs": bad,
                    "global_step": res.global_step, "best_metrics": json.dumps(res.best_metrics),
                    "task": task.extra_state(),
                })
            if progress:
                key, label, spec = config.headline or ("", "", "")
                tqdm.write(f"epoch {epoch}: loss {row['loss']:.4f}"
                           + (f", {label} {row[key]:{spec}}" if key in row else ""))
        D.barrier(info)
    return res
