"""Baselines run through the same data and metrics as dtrec: popularity, SASRec (ID-based) and content kNN.

Each kind is registered here (`dtrec.baselines.registry`) with its training and its score function: adding
a baseline is adding its module and one `register_baseline` below.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from dtrec.baselines.knn import ContentKNN, ContentKNNConfig
from dtrec.baselines.popularity import PopularityModel
from dtrec.baselines.registry import Baseline, get_baseline, list_baselines, register_baseline
from dtrec.baselines.sasrec import SASRec, SASRecConfig, SASRecTrainConfig, train_sasrec
from dtrec.config import checkpoint_folder, checkpoint_type, read_checkpoint_config
from dtrec.data.catalog import Dataset
from dtrec.eval import ScoreFn, evaluate
from dtrec.features import load_features

__all__ = ["Baseline", "baseline_of", "get_baseline", "list_baselines", "load_baseline", "register_baseline", "train_baseline"]


def baseline_of(path: str | Path) -> Baseline | None:
    """The registered kind of a checkpoint folder's baseline, None for a DualTower (ValueError for an unknown one)."""
    folder = checkpoint_folder(path)
    kind = checkpoint_type(folder)
    if kind == "dtrec":
        return None
    try:
        return get_baseline(kind)
    except ValueError:
        raise ValueError(f"{folder / 'config.json'} names an unknown model_type {kind!r}") from None


def load_baseline(path: str | Path):
    """Load a trained baseline checkpoint (popularity, SASRec; strict weights) written by `dtrec baseline`."""
    path = checkpoint_folder(path)
    baseline = baseline_of(path)
    if baseline is None:
        raise ValueError(f"{path} holds a 'dtrec' checkpoint, not a baseline")
    if baseline.load is None:
        raise ValueError(f"{path} holds a {baseline.name} baseline: it is built over features "
                         "(dtrec.scoring.load_scorer does)")
    return baseline.load(path)


def train_baseline(kind: str, data_dir: str | Path, out: str | Path, progress: bool = True, **options) -> dict:
    """Fit a baseline on a prepared data set, save it to `out`, write `out/valid.json`; returns valid metrics.

    `options` are the kind's own (SASRecConfig / SASRecTrainConfig fields for sasrec; unknown keys are an
    error); popularity ignores `seed` and `device`; content-knn takes `encoder` (required) and `query`.
    """
    baseline = get_baseline(kind)
    dataset = Dataset.load(data_dir)
    out = Path(out)
    options = {k: v for k, v in options.items() if v is not None}
    valid = baseline.train(dataset, Path(data_dir), out, options, progress)
    (out / "valid.json").write_text(json.dumps(valid, indent=2))
    return valid


def _refuse_unknown(kind: str, options: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"the {kind} baseline takes no option(s) {', '.join(unknown)}")


def _load_trained(cls: type) -> Any:
    def load(path: Path) -> Any:
        # huggingface_hub prints "Loading weights from local directory" on stdout for a folder: it would
        # corrupt `--json` output, and on stderr it is noise that is not ours.
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            return cls.from_pretrained(str(path), strict=True).eval()

    return load


def _trained_scorer(ckpt: Path, data_dir: Path, encoder: str | None, device: torch.device) -> ScoreFn:
    return load_baseline(ckpt).to(device).scores


# --------------------------------------------------------------------------- popularity
def _train_popularity(dataset: Dataset, data_dir: Path, out: Path, options: dict, progress: bool) -> dict:
    _refuse_unknown("popularity", options, {"seed", "device"})
    model = PopularityModel.fit(dataset)
    model.save_pretrained(out)
    return evaluate(model.scores, dataset.eval_cases("valid"), batch_size=1024)


register_baseline(Baseline(
    "popularity", _train_popularity, _trained_scorer, load=_load_trained(PopularityModel),
    flags=frozenset({"seed", "device"}),
    cold_note="popularity: cold items never occur in training, so they score 0"))


# --------------------------------------------------------------------------- sasrec
_SASREC_MODEL = {f.name for f in fields(SASRecConfig)} - {"num_items", "model_type"}
_SASREC_TRAIN = {f.name for f in fields(SASRecTrainConfig)}


def _train_sasrec(dataset: Dataset, data_dir: Path, out: Path, options: dict, progress: bool) -> dict:
    _refuse_unknown("sasrec", options, _SASREC_MODEL | _SASREC_TRAIN | {"resume"})
    cfg = SASRecConfig(num_items=len(dataset.catalog), **{k: v for k, v in options.items() if k in _SASREC_MODEL})
    tcfg = SASRecTrainConfig(**{k: v for k, v in options.items() if k in _SASREC_TRAIN})
    _, report = train_sasrec(dataset, cfg, tcfg, out=out, progress=progress, resume=bool(options.get("resume")))
    return report["valid"]


register_baseline(Baseline(
    "sasrec", _train_sasrec, _trained_scorer, load=_load_trained(SASRec),
    flags=frozenset(_SASREC_MODEL | _SASREC_TRAIN | {"resume"}),
    cold_note="ID model: cold items never seen in training (their embeddings are untrained)"))


# --------------------------------------------------------------------------- content-knn
def _train_content_knn(dataset: Dataset, data_dir: Path, out: Path, options: dict, progress: bool) -> dict:
    _refuse_unknown("content-knn", options, {"seed", "device", "encoder", "query"})
    if not options.get("encoder"):
        raise ValueError("the content-knn baseline needs --encoder (the features it ranks by)")
    features = load_features(data_dir, options["encoder"], dataset.catalog)
    model = ContentKNN(ContentKNNConfig(options["encoder"], options.get("query", "last")), features)
    model.save_pretrained(out)
    return evaluate(model.scores, dataset.eval_cases("valid"), batch_size=1024)


def _content_knn_scorer(ckpt: Path, data_dir: Path, encoder: str | None, device: torch.device) -> ScoreFn:
    name = encoder or read_checkpoint_config(ckpt)["encoder"]
    return ContentKNN.from_pretrained(ckpt, load_features(data_dir, name)).scores


register_baseline(Baseline("content-knn", _train_content_knn, _content_knn_scorer))
