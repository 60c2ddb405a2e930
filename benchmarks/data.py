"""The inputs the benchmarks measure on: synthetic embeddings, JPEGs and histories, and a demo folder."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import REPO, BenchError
from dtrec.config import ModelConfig
from dtrec.data.catalog import Dataset
from dtrec.data.movielens import read_movielens
from dtrec.demo import DemoBuildConfig, build_demo
from dtrec.features import Features, extract, load_features
from dtrec.model import DualTower


def synthetic_embeddings(n: int, dim: int = 512, *, seed: int = 0, latent: int = 64,
                         clusters: int = 1024) -> np.ndarray:
    """(n, dim) L2-normalised float32 vectors: Gaussian clusters in a `latent`-d subspace plus a little noise.

    Embeddings of real items occupy a low-dimensional, clustered part of the space;
    isotropic random vectors would make every approximate index look far worse than it is.
    """
    basis_rng = np.random.default_rng(12345)  # one fixed space, so queries and items share it
    A = basis_rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    centres = basis_rng.standard_normal((clusters, latent)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    block = 65_536  # generated block by block (bounded temporaries at 10^6 items), one seeded stream per block
    for b, lo in enumerate(range(0, n, block)):
        hi = min(n, lo + block)
        rng = np.random.default_rng([seed, b])
        z = rng.integers(0, clusters, hi - lo)
        g = centres[z] + 0.6 * rng.standard_normal((hi - lo, latent)).astype(np.float32)
        x = g @ A + 0.05 * rng.standard_normal((hi - lo, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo:hi] = x
    return out


def synthetic_jpeg(width: int, height: int, seed: int) -> bytes:
    """A `width` x `height` JPEG of gradients and noise (a poster-like amount of detail), reproducible by `seed`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 255, 3)
    arr = np.stack([(xx * (c + 1) + yy * (3 - c) + base[c]) % 256 for c in range(3)], -1).astype(np.uint8)
    arr = np.clip(arr.astype(np.int16) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@dataclass
class SyntheticHistories:
    """Random training histories over a random catalog: training speed depends on sizes, not content."""

    name: str
    catalog: range
    sequences: list[list[int]]

    def train_sequences(self) -> list[list[int]]:
        """The histories, as `Dataset.train_sequences` gives them."""
        return self.sequences


def synthetic_training_data(histories: int, items: int, *, dim: int = 512, seed: int = 0,
                            mean_length: float = 9.0) -> tuple[SyntheticHistories, Any]:
    """`histories` sequences of 5 or more items (geometric tail, about `mean_length` long) and CLIP-sized features."""
    if histories < 1 or items < 2:
        raise BenchError(f"synthetic data needs at least 1 history and 2 items, got {histories}x{items}")
    rng = np.random.default_rng(seed)
    lengths = np.minimum(5 + rng.geometric(1.0 / max(mean_length - 4.0, 1.0), histories) - 1, 50)
    flat = rng.integers(0, items, int(lengths.sum()))
    seqs = [s.tolist() for s in np.split(flat, np.cumsum(lengths)[:-1])]
    g = torch.Generator().manual_seed(seed)
    feats = Features("clip-vit-b-32", {m: torch.randn(items, dim, generator=g) for m in ("text", "image")},
                     {m: torch.ones(items, dtype=torch.bool) for m in ("text", "image")})
    return SyntheticHistories(f"synthetic {histories}x{items}", range(items), seqs), feats


def bench_demo(root: str | Path, *, encoder: str = "tiny-clip", reference_size: bool = False,
               source: str | Path | None = None) -> Path:
    """A demo folder in `root`: a prepared data set (default: the MovieLens test fixture) with
    `encoder` features and a randomly initialised DualTower (reference size or tiny)."""
    root = Path(root)
    if source is not None:  # someone's prepared data: read its cached features, never write into it
        ds = Dataset.load(source)
        feats = load_features(source, encoder, ds.catalog)
    else:
        fixture = REPO / "tests" / "fixtures" / "movielens"
        if not (fixture / "ml-100k").is_dir():
            raise BenchError(f"no demo folder given and the MovieLens fixture {fixture} is missing")
        ds = read_movielens(fixture / "ml-100k", fixture / "ml-1m-posters", root / "data", kcore=2, min_len=3)
        ds.save(root / "data")
        source = root / "data"
        ds = Dataset.load(source)
        feats = extract(ds, encoder, batch_size=32, progress=False)
    torch.manual_seed(0)
    size = {} if reference_size else dict(d_model=32, n_layers=1, n_heads=4, d_ff=64, max_len=10)
    cfg = ModelConfig(encoder=feats.encoder, modality_dims=feats.dims, dropout=0.0, emb_dropout=0.0, **size)
    ckpt = root / "ckpt"
    DualTower(cfg).eval().save_pretrained(str(ckpt))  # random weights: speed does not depend on them
    return build_demo(DemoBuildConfig(data=str(source), checkpoint=str(ckpt), out=str(root / "demo"),
                                      thumb_size=64, n_histories=50))
