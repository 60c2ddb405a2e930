"""Baselines run through the same data and metrics as dtrec: popularity and SASRec (ID-based)."""

from __future__ import annotations

import json
from pathlib import Path

BASELINE_TYPES = ("popularity", "sasrec")


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
    """Load a baseline checkpoint (strict weights) written by `dtrec baseline`."""
    kind = checkpoint_type(path)
    if kind == "popularity":
        from dtrec.baselines.popularity import PopularityModel

        return PopularityModel.from_pretrained(str(path), strict=True).eval()
    if kind == "sasrec":
        from dtrec.baselines.sasrec import SASRec

        return SASRec.from_pretrained(str(path), strict=True).eval()
    raise ValueError(f"{path} holds a {kind!r} checkpoint, not a baseline")
