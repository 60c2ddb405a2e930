"""Baselines run through the same data and metrics as dtrec: popularity, SASRec (ID-based) and content kNN."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

BASELINE_TYPES = ("popularity", "sasrec", "content-knn")


def checkpoint_type(path: str | Path) -> str:
    """'popularity', 'sasrec' or 'dtrec': which model a checkpoint folder holds (from its config.json)."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        raise FileNotFoundError(f"{cfg} is missing: is {path} a checkpoint folder?")
    kind = json.loads(cfg.read_text()).get("model_type", "dtrec")
    if kind not in BASELINE_TYPES + ("dtrec",):
        raise ValueError(f"{cfg} names an unknown model_type {kind!r}")
    return kind


def load_baseline(path: str | Path):
    """Load a popularity or SASRec checkpoint (strict weights) written by `dtrec baseline`."""
    kind = checkpoint_type(path)
    if kind == "content-knn":
        raise ValueError(f"{path} holds a content-knn baseline: it is built over features (load_scorer does)")
    if kind == "popularity":
        from dtrec.baselines.popularity import PopularityModel as cls
    elif kind == "sasrec":
        from dtrec.baselines.sasrec import SASRec as cls
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
    from dataclasses import fields

    from dtrec.data.catalog import Dataset
    from dtrec.eval import evaluate

    if kind not in BASELINE_TYPES:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINE_TYPES)}")
    dataset = Dataset.load(data_dir)
    out = Path(out)
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "content-knn":
        from dtrec.baselines.knn import ContentKNN, ContentKNNConfig
        from dtrec.features import load_features

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
        from dtrec.baselines.popularity import PopularityModel

        unknown = sorted(set(options) - {"seed", "device"})
        if unknown:
            raise ValueError(f"the popularity baseline takes no option(s) {', '.join(unknown)}")
        model = PopularityModel.fit(dataset)
        model.save_pretrained(out)
        valid = evaluate(model.scores, dataset.eval_cases("valid"), batch_size=1024)
    else:
        from dtrec.baselines.sasrec import SASRecConfig, SASRecTrainConfig, train_sasrec

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
