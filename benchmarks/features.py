"""Feature extraction speed: items/s of `dtrec.features.extract` with a frozen encoder."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import sync
from benchmarks.data import synthetic_jpeg
from dtrec.data.catalog import Catalog, Item
from dtrec.encoders import get_encoder
from dtrec.encoders.base import resolve_device
from dtrec.features import extract


def measure_feature_extraction(encoder: str, *, n_items: int = 64, batch_size: int = 32,
                               device: str | torch.device | None = None, image_px: tuple[int, int] = (300, 450),
                               seed: int = 0) -> dict[str, Any]:
    """Items/s of `dtrec.features.extract` with a frozen encoder: text only, image only (JPEG decode
    included) and both, on a synthetic catalog of `n_items`."""
    device = resolve_device(device)
    t0 = time.perf_counter()
    enc = get_encoder(encoder, device=device)
    get_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="dtrec-bench-feat-") as tmp:
        root = Path(tmp)
        words = "lab scope precise steel glass sensor digital kit pipette flask gauge meter".split()
        rng = random.Random(seed)
        paths = []
        for i in range(n_items):
            p = root / f"{i}.jpg"
            p.write_bytes(synthetic_jpeg(*image_px, seed=seed + i))
            paths.append(p.name)
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 40))) for _ in range(n_items)]
        variants = {
            "text": [Item(f"t{i}", f"Item {i}", texts[i]) for i in range(n_items)],
            "image": [Item(f"i{i}", "", "", paths[i]) for i in range(n_items)],
            "both": [Item(f"b{i}", f"Item {i}", texts[i], paths[i]) for i in range(n_items)],
        }
        # warm-up: encoders load their weights on first use; first calls allocate and pick kernels
        t0 = time.perf_counter()
        warm = Catalog(variants["both"][: min(4, n_items)], root=root)
        extract(warm, enc, batch_size=batch_size, cache=False, progress=False)
        load_s = get_s + time.perf_counter() - t0
        out: dict[str, Any] = {"encoder": encoder, "device": str(device), "dims": dict(enc.dims), "load_s": load_s,
                               "n_items": n_items, "batch_size": batch_size, "image_px": list(image_px)}
        for name, items in variants.items():
            mods = {"text": "text", "image": "image", "both": None}[name]
            if mods is not None and mods not in enc.dims:
                continue
            stats: dict[str, Any] = {}
            extract(Catalog(items, root=root), enc, batch_size=batch_size, cache=False, progress=False, stats=stats)
            sync(device)
            out[f"{name}_items_per_s"] = n_items / max(stats["encode_s"], 1e-9)
    return out
