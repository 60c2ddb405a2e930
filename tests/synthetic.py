"""Small synthetic catalogs for model and training tests (random features, planted patterns)."""

from __future__ import annotations

import torch

from dtrec.config import FinetuneConfig, ModelConfig
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.features import Features


def planted_dataset(n_items: int = 40, n_users: int = 200, length: tuple[int, int] = (4, 12), seed: int = 0,
                    dims: dict[str, int] | None = None, missing: float = 0.0) -> tuple[Dataset, Features]:
    """Histories where the next item is a fixed random function of the last; random features."""
    g = torch.Generator().manual_seed(seed)
    dims = dims or {"text": 16, "image": 12}
    nxt = torch.randperm(n_items, generator=g)
    seqs = []
    for _ in range(n_users):
        s = [int(torch.randint(n_items, (1,), generator=g))]
        n = int(torch.randint(length[0], length[1] + 1, (1,), generator=g))
        for _ in range(n - 1):
            s.append(int(nxt[s[-1]]))
        seqs.append(s)
    catalog = Catalog([Item(id=f"i{i}", title=f"item {i}", text="") for i in range(n_items)])
    ds = Dataset(catalog, Interactions([f"u{u}" for u in range(n_users)], seqs), name="planted")
    values = {m: torch.randn(n_items, d, generator=g) for m, d in dims.items()}
    present = {m: torch.ones(n_items, dtype=torch.bool) for m in dims}
    if missing and len(dims) > 1:
        # Each item loses at most one modality, so every item keeps some content.
        drop = torch.rand(n_items, generator=g) < missing
        which = torch.randint(len(dims), (n_items,), generator=g)
        for k, m in enumerate(dims):
            present[m] = ~(drop & (which == k))
            values[m][~present[m]] = 0.0
    return ds, Features("synthetic", values, present)


def tiny_model_config(features: Features, **kw) -> ModelConfig:
    """A small, fast architecture for tests."""
    base = dict(encoder=features.encoder, modality_dims=features.dims, d_model=32, n_layers=1, n_heads=4,
                d_ff=64, dropout=0.0, emb_dropout=0.0, max_len=10)
    base.update(kw)
    return ModelConfig(**base)


def tiny_finetune_config(features: Features, model: dict | None = None, **kw) -> FinetuneConfig:
    """A short CPU training run for tests."""
    base = dict(epochs=20, batch_size=64, lr=3e-3, weight_decay=0.0, patience=100, eval_batch_size=256,
                amp=False, device="cpu", evaluate_test=True)
    base.update(kw)
    return FinetuneConfig(model=tiny_model_config(features, **(model or {})), **base)


def paired_features(n: int = 160, seed: int = 0) -> Features:
    """Text and image features as two noisy random views of one latent per item (for pretraining)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g)
    text = z @ torch.randn(8, 16, generator=g) + 0.1 * torch.randn(n, 16, generator=g)
    image = z @ torch.randn(8, 12, generator=g) + 0.1 * torch.randn(n, 12, generator=g)
    present = {"text": torch.ones(n, dtype=torch.bool), "image": torch.ones(n, dtype=torch.bool)}
    present["image"][:10] = False  # some items lack an image: they stay out of the pairs needing one
    image[:10] = 0
    return Features("synthetic", {"text": text, "image": image}, present)
