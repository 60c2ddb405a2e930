"""Baseline kinds by name: how each is trained (`dtrec baseline <kind>`) and turned into a score function
(`dtrec evaluate`), filled by `register_baseline`.

A checkpoint's `config.json` names its kind as `model_type` (`dtrec.config.checkpoint_type`); a DualTower's
names none (or "dtrec") and is no baseline. This module registers nothing itself and imports no baseline:
`dtrec/baselines/__init__.py` registers the built-in ones (popularity, sasrec, content-knn).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dtrec.registry import Registry

if TYPE_CHECKING:
    import torch

    from dtrec.data.catalog import Dataset

# train(dataset, data folder, out, options, progress) -> valid metrics; writes the checkpoint into `out`
TrainFn = Callable[["Dataset", Path, Path, "dict[str, Any]", bool], "dict"]
# scorer(checkpoint folder, data folder, encoder override, device) -> (histories) -> scores (B, N)
ScorerFn = Callable[[Path, Path, "str | None", "torch.device"], Callable[[list[list[int]]], "torch.Tensor"]]


@dataclass(frozen=True)
class Baseline:
    """One registered baseline kind.

    `load(folder)`: the trained model (with `.scores`), None when the kind is built over features at scoring.
    `flags`: the `dtrec baseline` options handed to `train` (None: all given; `train` refuses those it lacks).
    `cold_note`: what its cold-start numbers mean, shown beside them.
    """

    name: str
    train: TrainFn
    scorer: ScorerFn
    load: Callable[[Path], Any] | None = None
    flags: frozenset[str] | None = None
    cold_note: str | None = None


_BASELINES: Registry[Baseline] = Registry(
    "baseline", lambda name, known: f"unknown baseline {name!r}; choose one of {', '.join(known)}")


def register_baseline(baseline: Baseline) -> Baseline:
    """Add a baseline kind under `baseline.name` ("dtrec" names the DualTower, no baseline)."""
    if baseline.name == "dtrec":
        raise ValueError("'dtrec' names the DualTower: a baseline needs another name")
    return _BASELINES.add(baseline.name, baseline)


# the table's own methods, under the names callers use
unregister_baseline = _BASELINES.remove
list_baselines = _BASELINES.entries
get_baseline = _BASELINES.get
