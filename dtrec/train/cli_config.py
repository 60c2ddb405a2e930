"""Command-line flags for every field of a training config, and their resolution.

Precedence, lowest first: dataclass defaults, a base config (the saved one on
`--resume`), `--config FILE`, then explicit flags. Model fields live under the
config's `model` key; `encoder` and `modality_dims` always come from the features.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from dtrec.config import ModelConfig

T = TypeVar("T")
_FROM_FEATURES = ("encoder", "modality_dims")


def _flag_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _fields(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, _flag_type(hints[f.name])) for f in dataclasses.fields(cls)]


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field-name` flag per field of `cls` and of its ModelConfig (default: not given)."""
    groups = [(cls, f"{cls.__name__} fields"), (ModelConfig, "model fields")]
    for c, title in groups:
        g = parser.add_argument_group(title)
        for name, tp in _fields(c):
            if name == "model" or (c is ModelConfig and name in _FROM_FEATURES):
                continue
            flag = "--" + name.replace("_", "-")
            if tp is bool:
                g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
            elif tp in (int, float, str):
                g.add_argument(flag, dest=name, type=tp, default=None)


def resolve_config(cls: type[T], args: argparse.Namespace, base: dict | None = None) -> T:
    """Build `cls` from `base`, then `args.config` (a JSON file), then explicit flags."""
    data: dict[str, Any] = json.loads(json.dumps(base or {}))
    data.setdefault("model", {})
    if getattr(args, "config", None):
        file_data = json.loads(Path(args.config).read_text())
        data["model"].update(file_data.pop("model", {}) or {})
        data.update(file_data)
    train_names = {n for n, _ in _fields(cls)} - {"model"}
    model_names = {n for n, _ in _fields(ModelConfig)} - set(_FROM_FEATURES)
    for name in train_names | model_names:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in train_names:
            data[name] = value
        else:
            data["model"][name] = value
    unknown = sorted(set(data) - train_names - {"model"})
    unknown += sorted(f"model.{k}" for k in set(data["model"]) - model_names - set(_FROM_FEATURES))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**data)
