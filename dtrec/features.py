"""Per-modality item features from frozen encoders, and their on-disk cache.

`Features` holds one (N, D_m) float32 array per modality plus a presence mask;
a missing modality is a zero row with `present[m][i] == False`. The cache lives
at `DIR/features/<encoder-slug>.safetensors` with the encoder name, the
catalog fingerprint and the dims in its metadata, so a changed catalog or
encoder is never served from a stale file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MODALITIES = ("text", "image")


@dataclass
class Features:
    """Item features of one encoder: `values[m]` (N, D_m) and `present[m]` (N,) bool."""

    encoder: str
    values: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    fingerprint: str = ""

    def __post_init__(self):
        ns = {v.shape[0] for v in self.values.values()} | {p.shape[0] for p in self.present.values()}
        if len(ns) > 1:
            raise ValueError(f"features disagree on the number of items: {sorted(ns)}")
        if set(self.values) != set(self.present):
            raise ValueError("features need one presence mask per modality")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.values)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(self.values[m].shape[1]) for m in self.modalities}

    def __len__(self) -> int:
        return int(next(iter(self.values.values())).shape[0])

    def subset(self, index: torch.Tensor | list[int]) -> "Features":
        """Rows `index` of every modality (same order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return Features(self.encoder, {m: v[idx] for m, v in self.values.items()},
                        {m: p[idx] for m, p in self.present.items()}, self.fingerprint)

    def to(self, device: torch.device | str) -> "Features":
        """The same features on `device`."""
        return Features(self.encoder, {m: v.to(device) for m, v in self.values.items()},
                        {m: p.to(device) for m, p in self.present.items()}, self.fingerprint)

    def save(self, path: str | Path) -> Path:
        """Atomically write a safetensors file with encoder and fingerprint metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for m in self.modalities:
            tensors[m] = self.values[m].float().contiguous()
            tensors[f"{m}_present"] = self.present[m].to(torch.uint8).contiguous()
        meta = {"encoder": self.encoder, "fingerprint": self.fingerprint, "dims": json.dumps(self.dims)}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Features":
        """Read a file written by `save`."""
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        mods = [m for m in MODALITIES if m in t]
        return cls(meta.get("encoder", ""), {m: t[m].float() for m in mods},
                   {m: t[f"{m}_present"].bool() for m in mods}, meta.get("fingerprint", ""))


def encoder_slug(name: str) -> str:
    """File-system-safe form of an encoder name (`clip:ViT-B-32:openai` -> `clip-ViT-B-32-openai`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def cache_path(data_dir: str | Path, encoder: str) -> Path:
    """Where the feature cache of `encoder` lives inside a prepared data set."""
    return Path(data_dir) / "features" / f"{encoder_slug(encoder)}.safetensors"
