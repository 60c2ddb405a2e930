"""A tiny demo folder for app and demo tests: the MovieLens fixture, tiny-clip features, a random DualTower."""

from __future__ import annotations

from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "movielens"


def make_tiny_demo(root: Path, *, thumb_size: int = 64) -> Path:
    """Build `root/demo` with `dtrec.demo.build_demo` from committed fixtures only (no network)."""
    from dtrec.config import ModelConfig
    from dtrec.data.movielens import read_movielens
    from dtrec.demo import DemoBuildConfig, build_demo
    from dtrec.features import extract
    from dtrec.model import DualTower

    root = Path(root)
    ds = read_movielens(FIXTURE / "ml-100k", FIXTURE / "ml-1m-posters", root / "data", kcore=2, min_len=3)
    ds.save(root / "data")
    feats = extract(ds, "tiny-clip", batch_size=64, device="cpu", progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=feats.encoder, modality_dims=feats.dims, d_model=32, n_layers=1, n_heads=4,
                      d_ff=64, dropout=0.0, emb_dropout=0.0, max_len=10)
    DualTower(cfg).eval().save_pretrained(str(root / "ckpt"))
    results = {"dtrec": {"test": {"recall@10": 0.2, "ndcg@10": 0.1, "mrr": 0.08},
                         "valid": {"recall@10": 0.25, "ndcg@10": 0.12, "mrr": 0.09}},
               "popularity": {"test": {"recall@10": 0.1, "ndcg@10": 0.05, "mrr": 0.04}},
               "meta": {"recipe": "tests/tiny_demo.py", "seed": 0}}  # a recipe's provenance entry
    (root / "ckpt" / "results.json").write_text(__import__("json").dumps(results))
    return build_demo(DemoBuildConfig(data=str(root / "data"), checkpoint=str(root / "ckpt"),
                                      out=str(root / "demo"), thumb_size=thumb_size, n_histories=20))
