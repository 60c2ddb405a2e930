"""Baselines run through the same data and metrics as dtrec: popularity, SASRec (ID-based) and content kNN."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import fields
from pathlib import Path

from dtrec.baselines.knn import ContentKNN, ContentKNNConfig
from dtrec.baselines.popularity import PopularityModel
from dtrec.baselines.sasrec import SASRec, SASRecConfig, SASRecTrainConfig, train_sasrec
from dtrec.config import BASELINE_TYPES, checkpoint_folder, checkpoint_type
from dtrec.data.catalog import Dataset
from dtrec.eval import evaluate
from dtrec.features import load_features


def load_baseline(path: str | Path):
    """Load a popularity or SASRec checkpoint (strict weights) written by `dtrec baseline`."""
    path = checkpoint_folder(path)
    kind = checkpoint_type(path)
    if kind == "content-knn":
        raise ValueError(f"{path} holds a content-knn baseline: it is built over features "
                         "(dtrec.scoring.load_scorer does)")
    if kind == "popularity":
        cls = PopularityModel
    elif kind == "sasrec":
        cls = SASRec
    else:
        raise ValueError(f"{path} holds a {kind!r} checkpoint, not a baseline")
    # huggingface_hub prints "Loading weights from local directory" on stdout for a folder: it would
    # corrupt `--json` output, and on stderr it is noise that is not ours.
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        return cls.from_pretrained(str(path), strict=True).eval()


def train_baseline(kind: str, data_dir: str | Path, out: str | Path, progress: bool = True, **options) -> dict:
    """Fit a baseline on a prepared data set, save it to `out`, write `out/valid.json`; returns valid metrics.

    `options` are SASRecConfig / SASRecTrainConfig fields (unknown keys are an error);
    popularity ignores `seed` and `device`; content-knn takes `encoder` (required) and `query`.
    """
    if kind not in BASELINE_TYPES:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINE_TYPES)}")
    dataset = Dataset.load(data_dir)
    out = Path(out)
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "content-knn":
        unknown = sorted(set(options) - {"seed", "device", "encoder", "query"})
        if unknown:
            raise ValueError(f"the content-knn baseline takes no option(s) {', '.join(unknown)}")
        if not options.get("encoder"):
            raise ValueError("the content-knn baseline needs --encoder (the features it ranks by)")
        features = load_features(data_dir, options["encoder"], dataset.catalog)
        model = ContentKNN(ContentKNNConfig(options["encoder"], options.get("query", "last")), features)
        model.save_pretrained(out)
        valid = evaluate(model.scores, dataset.eval_cases("valid"), batch_size=1024)
    elif kind == "popularity":
        unknown = sorted(set(options) - {"seed", "device"})
        if unknown:
            raise ValueError(f"the popularity baseline takes no option(s) {', '.join(unknown)}")
        model = PopularityModel.fit(dataset)
        model.save_pretrained(out)
        valid = evaluate(model.scores, dataset.eval_cases("valid"), batch_size=1024)
    else:
        mnames = {f.name for f in fields(SASRecConfig)} - {"num_items", "model_type"}
        tnames = {f.name for f in fields(SASRecTrainConfig)}
        unknown = sorted(set(options) - mnames - tnames)
        if unknown:
            raise ValueError(f"the sasrec baseline takes no option(s) {', '.join(unknown)}")
        cfg = SASRecConfig(num_items=len(dataset.catalog), **{k: v for k, v in options.items() if k in mnames})
        tcfg = SASRecTrainConfig(**{k: v for k, v in options.items() if k in tnames})
        _, report = train_sasrec(dataset, cfg, tcfg, out=out, progress=progress)
        valid = report["valid"]
    (out / "valid.json").write_text(json.dumps(valid, indent=2))
    return valid
