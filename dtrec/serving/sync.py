"""The store kept in step with what is served: seeded from the catalog once, and refreshed when the catalog
(with its features), the model's weights or its encoder change; uploads are kept, re-encoded when the
encoder changed. The fingerprints of all three are kept in the store's meta table.

A demo folder carries its catalog's item-tower embeddings (`ITEM_EMBEDDINGS`, keyed by catalog, weights
and feature values: `item_embeddings_key`): a fresh store takes them instead of running the item tower,
and a stale or unreadable file is recomputed and rewritten where the folder is writable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dtrec.data.catalog import Catalog
from dtrec.features import Features
from dtrec.fileio import atomic_write_bytes
from dtrec.serving.encoding import item_tower
from dtrec.store import ItemStore, NewItem, StoredItem

log = logging.getLogger("dtrec.service")  # what a start did is the service's log

ITEM_EMBEDDINGS = "item_embeddings.safetensors"  # a demo folder's carried item-tower embeddings

# Raw features of one item's (title, text, image), per modality (None: absent).
Encode = Callable[[str, str, "Image.Image | None"], "dict[str, np.ndarray | None]"]


def default_store_dir(model_dir: str | Path, catalog_dir: str | Path) -> Path:
    """The store of a model and catalog when none is given: `$DTREC_STORE_DIR`, else `~/.cache/dtrec/store/<hash>`
    (`$XDG_CACHE_HOME` for `~/.cache`), one per (model, catalog) pair and never inside the folders served."""
    if os.environ.get("DTREC_STORE_DIR"):
        return Path(os.environ["DTREC_STORE_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dtrec" / "store" / hashlib.sha256(f"{model_dir}|{catalog_dir}".encode()).hexdigest()[:12]


def state_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the config and every weight (changes when the checkpoint changes)."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(model.config), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def catalog_fingerprint(catalog_fp: str, features: Features) -> str:
    """The store's key for a catalog: its content (`Catalog.fingerprint()`, given as `catalog_fp`: it hashes
    every image file, so the caller computes it once) and the features read for it (encoder, values, dims)."""
    return hashlib.sha256(json.dumps(
        [catalog_fp, features.encoder, features.fingerprint, features.dims]).encode()).hexdigest()[:16]


def item_embeddings_key(catalog_key: str, model_fp: str, features: Features) -> str:
    """What carried item-tower embeddings were made from: catalog, weights and the feature values themselves
    (a feature file rewritten in place, say in fp16, keeps its fingerprint but changes the embeddings)."""
    h = hashlib.sha256(json.dumps([catalog_key, model_fp]).encode())
    for m in sorted(features.modalities):
        h.update(m.encode())
        h.update(features.values[m].detach().float().cpu().contiguous().numpy().tobytes())
        h.update(features.present[m].detach().cpu().numpy().astype(np.uint8).tobytes())
    return h.hexdigest()[:16]


def load_item_embeddings(path: str | Path, key: str) -> np.ndarray | None:
    """The (N, d) float32 embeddings carried in `path` when they were made under `key`, else None."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return np.asarray(f.get_tensor("embeddings"), dtype=np.float32)
    except Exception as e:  # a truncated or foreign file is recomputed, never trusted
        log.warning("dtrec: ignoring unreadable %s (%s)", path.name, e)
        return None


def save_item_embeddings(path: str | Path, embeddings: np.ndarray, key: str) -> Path:
    """Atomically write carried item-tower embeddings (float32) under `key`."""
    from safetensors.numpy import save

    data = save({"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)}, metadata={"key": key})
    atomic_write_bytes(Path(path), data, fsync=False)  # a lost file is recomputed; a torn one never read
    return Path(path)


def carried_path(demo_dir: Path | None, model_dir: str | Path, catalog_dir: str | Path) -> Path | None:
    """Where the demo folder carries its catalog's item embeddings; None when model or catalog is not the
    folder's own (an override's embeddings would only displace the folder's)."""
    if demo_dir is None:
        return None
    own = all(Path(p).resolve() == (demo_dir / sub).resolve()
              for p, sub in ((model_dir, "model"), (catalog_dir, "catalog")))
    return demo_dir / ITEM_EMBEDDINGS if own else None


def catalog_embeddings(model: torch.nn.Module, features: Features, key: str, carried: Path | None) -> np.ndarray:
    """Item-tower embeddings of the catalog: the `carried` copy when it was made under `key`, else computed,
    and carried from now on where the folder is writable."""
    emb = load_item_embeddings(carried, key) if carried is not None else None
    if emb is not None and emb.shape == (len(features), int(model.config.d_model)):
        return emb
    emb = item_tower(model, features)
    if carried is not None:
        try:
            save_item_embeddings(carried, emb, key)
        except OSError as e:  # a read-only folder (a Hub snapshot): every fresh store computes them
            log.info("dtrec: could not write %s (%s)", carried, e)
    return emb


def sync_store(store: ItemStore, catalog: Catalog, features: Features, model: torch.nn.Module,
               encode: Encode, *, catalog_fp: str, carried: Path | None = None) -> None:
    """Seed `store` from the catalog once; refresh it when catalog, encoder or weights changed.

    `features` are the catalog's, of the model's modalities; `catalog_fp` is `catalog.fingerprint()`;
    `carried` is the demo folder's `ITEM_EMBEDDINGS` file a fresh store seeds from (None: none);
    `encode` re-encodes an upload when the encoder changed.
    """
    encoder = model.config.encoder
    dims = dict(model.config.modality_dims)
    catalog_fp = catalog_fingerprint(catalog_fp, features)
    model_fp = state_fingerprint(model)
    old_encoder = store.get_meta("encoder")
    fresh_catalog = False
    if store.get_meta("catalog_fingerprint") != catalog_fp:
        emb = catalog_embeddings(model, features, item_embeddings_key(catalog_fp, model_fp, features), carried)
        new = []
        for i, it in enumerate(catalog):
            p = catalog.image_path(i)
            data = p.read_bytes() if p is not None and p.is_file() else None
            new.append(NewItem(
                id=it.id, title=it.title, text=it.text, meta=it.meta, image=data,
                image_ext=p.suffix.lstrip(".") if p is not None else "jpg",
                features={m: features.values[m][i].numpy() if bool(features.present[m][i]) else None
                          for m in features.modalities},
                embedding=emb[i]))
        store.replace_catalog(new, {"catalog_fingerprint": catalog_fp})
        fresh_catalog = True
    if old_encoder is not None and old_encoder != encoder and store.count(uploads=True):
        reencode_uploads(store, dims, encode)
    if store.get_meta("model_fingerprint") != model_fp or old_encoder != encoder:
        # embeddings of stored rows come from other weights: recompute them from stored features
        rows, values, present, _ = store.vectors(dims, None)
        if not fresh_catalog or store.count(uploads=True):
            keep = slice(None) if not fresh_catalog else rows >= len(catalog)
            rows = rows[keep]
            if len(rows):
                # Catalog rows are the catalog's own features (a model with item IDs adds each row's ID);
                # uploads are scored by content alone.
                up = rows >= len(catalog)
                emb = np.zeros((len(rows), int(model.config.d_model)), np.float32)
                if (~up).any():
                    emb[~up] = item_tower(model, features)[rows[~up]]
                if up.any():
                    feats = Features(encoder, {m: torch.from_numpy(values[m][keep][up]) for m in dims},
                                     {m: torch.from_numpy(present[m][keep][up]) for m in dims})
                    emb[up] = item_tower(model, feats, ids=False)
                store.update_vectors(rows.tolist(), emb)
        store.set_meta("model_fingerprint", model_fp)
        store.set_meta("encoder", encoder)


def reencode_uploads(store: ItemStore, dims: dict[str, int], encode: Encode) -> None:
    """Uploads carry features of another encoder: encode their stored text and image again."""
    ups = store.uploads_oldest_first()
    rows, feats = [], {m: [] for m in dims}
    for it in ups:
        img = None
        if it.image and Path(it.image).is_file():
            with Image.open(it.image) as im:
                im.load()
                img = im.convert("RGB")
        vals = encode(it.title, it.text, img)
        rows.append(it.row)
        for m in dims:
            feats[m].append(vals[m])
    store.update_vectors(rows, None, {
        m: None if all(v is None for v in feats[m]) else
        np.stack([v if v is not None else np.zeros(dims[m], np.float32) for v in feats[m]]) for m in dims})


def catalog_image(catalog: Catalog, it: StoredItem) -> bytes | None:
    """The catalog folder's copy of a catalog item's image (to restore a lost store copy)."""
    if it.is_upload or not catalog.has(it.id):
        return None
    p = catalog.image_path(catalog.index_of(it.id))
    return p.read_bytes() if p is not None and p.is_file() else None
