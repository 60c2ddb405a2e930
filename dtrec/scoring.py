"""Checkpoints as score functions, one loader per model type, and `evaluate_checkpoint`.

A checkpoint folder's `config.json` names its model type (`dtrec.config.checkpoint_type`): a DualTower,
loaded here, or a registered baseline, whose `scorer` (`dtrec.baselines.registry`) turns the folder and a
prepared data set into `(histories) -> scores (B, N)`, which `dtrec.eval.evaluate` ranks. This module
sits above both the model and the baselines, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from dtrec.baselines import baseline_of, get_baseline
from dtrec.config import DEFAULT_TIES, checkpoint_folder, read_checkpoint_config
from dtrec.data.catalog import Dataset
from dtrec.eval import ScoreFn, evaluate
from dtrec.features import Features, load_features
from dtrec.model import DualTower


def dual_tower_score_fn(model: DualTower, features: Features, device: str | torch.device = "cpu",
                        item_batch_size: int = 4096) -> ScoreFn:
    """Score function of a DualTower on `device`, in eval mode: `DualTower.scorer` (the two towers' cosine
    plus its repeat and content terms)."""
    return model.to(device).eval().scorer(features.to(device), item_batch_size)


def _dual_tower(ckpt: Path, data_dir: str | Path, encoder: str | None, device: torch.device) -> ScoreFn:
    with contextlib.redirect_stdout(sys.stderr):  # keep --json clean whatever the Hub client prints
        model = DualTower.from_pretrained(str(ckpt))
    name = encoder or read_checkpoint_config(ckpt).get("encoder")
    if not name:
        raise ValueError(f"{ckpt / 'config.json'} names no encoder: pass --encoder")
    features = load_features(data_dir, name)
    model.check_features(features)
    return dual_tower_score_fn(model, features, device)


def load_scorer(checkpoint: str | Path, data_dir: str | Path, encoder: str | None = None,
                device: str | torch.device | None = None) -> tuple[str, ScoreFn]:
    """(model type, score function) for a DualTower or baseline checkpoint over the data set at `data_dir`."""
    ckpt = checkpoint_folder(checkpoint)
    baseline = baseline_of(ckpt)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if baseline is None:
        return "dtrec", _dual_tower(ckpt, data_dir, encoder, device)
    return baseline.name, baseline.scorer(ckpt, Path(data_dir), encoder, device)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_dir: str | Path,
    encoder: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | None = False,
    exclude_history: bool = False,
    ties: str = DEFAULT_TIES,
    standard_error: bool = False,
) -> dict[str, dict]:
    """{"valid", "test"[, "cold_start"]} full-ranking metrics of a checkpoint; cold_start iff the data has cold items.

    `exclude_history` scores with each user's history hidden (the serving protocol); the
    default hides nothing (the reference protocol of published sequential results). Each split
    names its `protocol` ("reference" | "serving") and `ties` rule. `standard_error` adds each
    metric's standard error over the split's users (`se`, see `dtrec.eval.evaluate`).
    """
    dataset = Dataset.load(data_dir)
    if not len(dataset.interactions):
        raise ValueError(f"{data_dir} is a catalog without interactions: nothing to evaluate (prepare it "
                         "again with --interactions; its extracted features are kept)")
    kind, score_fn = load_scorer(checkpoint, data_dir, encoder=encoder, device=device)
    out: dict[str, dict] = {}
    opts = {"batch_size": batch_size, "progress": progress, "exclude_history": exclude_history, "ties": ties,
            "standard_error": standard_error}
    for split in ("valid", "test"):
        out[split] = evaluate(score_fn, dataset.eval_cases(split), desc=f"evaluate {split}", **opts)
    if dataset.cold_items:
        cold = evaluate(score_fn, dataset.cold_cases("test"), desc="evaluate cold start", **opts)
        note = get_baseline(kind).cold_note if kind != "dtrec" else None
        if note:
            cold["note"] = note
        out["cold_start"] = cold
    for metrics in out.values():  # what the numbers mean travels with them
        metrics["protocol"] = "serving" if exclude_history else "reference"
        metrics["ties"] = ties
    return out
