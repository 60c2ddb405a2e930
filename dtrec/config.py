"""Dataclass configs, saved as JSON beside every checkpoint and result.

Each config loads from a JSON file and/or `--key value` flags (`from_sources`),
and `asdict` gives what is written as `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """Build `cls` from an optional JSON file, then non-None keyword overrides."""
    data: dict[str, Any] = {}
    if path:
        data.update(json.loads(Path(path).read_text()))
    data.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**data)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write a dataclass config as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True))
    return path
