"""Small synthetic catalogs for model and training tests (random features, planted patterns), and a
synthetic demo folder for the service's tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dtrec.config import FinetuneConfig, ModelConfig, ServeConfig
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.demo import write_demo_folder
from dtrec.features import Features, cache_path
from dtrec.model import DualTower
from dtrec.service import Recommender


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


def walk_dataset(name: str = "walk", seed: int = 0, n_items: int = 60, n_users: int = 300,
                 image: bool = False) -> tuple[Dataset, Features]:
    """Items on a random walk through text-feature space and users who walk it: the next item is a near neighbour
    of the last one by the features (the one before it is as near, and already in the history). Row order says
    nothing; without `image` the image modality is absent from every item."""
    g = torch.Generator().manual_seed(seed)
    walk = torch.nn.functional.normalize(torch.cumsum(torch.randn(n_items, 16, generator=g), 0), dim=-1)
    order = torch.randperm(n_items, generator=g)
    text = torch.empty_like(walk)
    text[order] = walk
    seqs = []
    for _ in range(n_users):
        n = int(torch.randint(4, 9, (1,), generator=g))
        start = int(torch.randint(n_items - n, (1,), generator=g))
        seqs.append([int(order[i]) for i in range(start, start + n)])
    catalog = Catalog([Item(id=f"{name}{i}", title=f"{name} {i}", text="") for i in range(n_items)])
    ds = Dataset(catalog, Interactions([f"u{u}" for u in range(n_users)], seqs), name=name)
    img = torch.randn(n_items, 12, generator=g) if image else torch.zeros(n_items, 12)
    present = {"text": torch.ones(n_items, dtype=torch.bool), "image": torch.full((n_items,), image, dtype=torch.bool)}
    return ds, Features("synthetic", {"text": text, "image": img}, present)


def padded_batch(histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(items, padding) of histories right-padded to the longest: padded places hold -1 and are True in padding."""
    from dtrec.sequences import pad

    length = max(map(len, histories))
    items = pad(histories, length)
    padding = torch.arange(length).unsqueeze(0) >= torch.tensor([len(h) for h in histories]).unsqueeze(1)
    return items.masked_fill(padding, -1), padding


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


def random_item_ids(config: ModelConfig, features: Features) -> DualTower:
    """A DualTower of `config` (with `id_rows`) fitted and bound to `features`, its item IDs random (eval mode)."""
    model = DualTower(config).eval()
    model.fit_feature_norm(features)
    model.bind_item_ids(features)
    with torch.no_grad():
        model.item_ids.weight.normal_()
    return model


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


# --------------------------------------------------------------------------- a demo folder to serve
N_ITEMS = 40  # items of the synthetic demo folder; every fourth is text-only
DEMO_DIMS = {"text": 32, "image": 32}  # the tiny-clip encoder's dims
GENRES = ["Comedy", "Drama", "Horror"]


def write_offline_catalog(folder: Path, n: int, cold_items: list[int], seed: int = 0) -> Dataset:
    """A prepared data set of `n` items (one user) with random features of the offline encoder's sizes, which the
    shipped model reads: for scripts that take `--checkpoint pretrained`."""
    g = torch.Generator().manual_seed(seed)
    catalog = Catalog([Item(id=str(i), title=f"t{i}", text="") for i in range(n)])
    ds = Dataset(catalog, Interactions(["u"], [[0, 1]]), name="x", cold_items=cold_items)
    ds.save(folder)
    present = {m: torch.ones(n, dtype=torch.bool) for m in ("text", "image")}
    Features("offline", {"text": torch.randn(n, 384, generator=g), "image": torch.randn(n, 1280, generator=g)},
             present, ds.catalog.fingerprint()).save(cache_path(folder, "offline"))
    return ds


def png_bytes(w: int = 6, h: int = 4, color=(200, 10, 10), mode: str = "RGB", fmt: str = "PNG", **save) -> bytes:
    """A small image file's bytes."""
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format=fmt, **save)
    return buf.getvalue()


def tiny_dual_tower(seed: int) -> DualTower:
    """An untrained DualTower over tiny-clip features."""
    torch.manual_seed(seed)
    return DualTower(ModelConfig(encoder="tiny-clip", modality_dims=DEMO_DIMS, d_model=32, n_layers=1, n_heads=2,
                                 d_ff=64, max_len=10)).eval()


def write_synthetic_demo(data_root: Path, out: Path, make_model=None) -> dict:
    """A demo folder written by `write_demo_folder` from a synthetic data set and random tiny-clip features:
    {"dir", "dataset", "features"}; `make_model(features)` gives its model (default `tiny_dual_tower(0)`)."""
    (data_root / "images").mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(N_ITEMS):
        image = None
        if i % 4:  # every fourth item is text-only
            image = f"images/{i}.png"
            (data_root / image).write_bytes(png_bytes(8, 8, tuple(int(c) for c in rng.integers(0, 255, 3))))
        items.append(Item(f"m{i}", f"Movie {i} ({1990 + i})", f"A film about thing {i}.", image,
                          {"year": 1990 + i, "genres": [GENRES[i % 3]]}))
    catalog = Catalog(items, root=data_root)
    seqs = [rng.choice(N_ITEMS, size=int(rng.integers(4, 9)), replace=False).tolist() for _ in range(12)]
    dataset = Dataset(catalog, Interactions([f"u{u}" for u in range(12)], seqs), name="synthetic", root=data_root)
    g = torch.Generator().manual_seed(1)
    has_image = torch.tensor([bool(it.image) for it in items])
    features = Features("tiny-clip", {m: torch.randn(N_ITEMS, d, generator=g) for m, d in DEMO_DIMS.items()},
                        {"text": torch.ones(N_ITEMS, dtype=torch.bool), "image": has_image})
    features.values["image"][~has_image] = 0
    model = make_model(features) if make_model is not None else tiny_dual_tower(0)
    folder = write_demo_folder(dataset, features, model, out, results={"dtrec": {"test": {"ndcg@10": 0.1}}})
    return {"dir": folder, "dataset": dataset, "features": features}


def open_demo(demo: dict, store: Path, **cfg) -> Recommender:
    """A Recommender over `write_synthetic_demo`'s folder with its own store and `ServeConfig` fields."""
    return Recommender.from_folder(demo["dir"], store_dir=store, config=ServeConfig(**cfg) if cfg else None)
