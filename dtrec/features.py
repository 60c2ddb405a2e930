"""Per-modality item features from frozen encoders, and their on-disk cache.

`Features` holds one (N, D_m) float32 array per modality plus a presence mask;
a missing modality is a zero row with `present[m][i] == False`. The cache lives
at `DIR/features/<encoder-slug>.safetensors` with the encoder name, the
catalog fingerprint and the dims in its metadata, so a changed catalog or
encoder is never served from a stale file.

On disk a modality is stored compactly: the presence mask (N,) and one row per
item that *has* the modality, so a titles-only catalog stores no image column at
all. In memory a modality that no item has is a zero row broadcast to (N, D_m)
(`Tensor.expand`, no storage); reading rows of it yields ordinary zero tensors.
Files in the earlier dense layout (one row per item) still load.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from dtrec import encoders
from dtrec.data.catalog import Catalog, Dataset
from dtrec.encoders.base import Encoder, thread_map, to_rgb

if TYPE_CHECKING:
    from PIL import Image

MODALITIES = ("text", "image")
# "compact": one stored row per item that has the modality (see the module docstring). A file
# without this key is in the dense layout of earlier versions, which still loads.
LAYOUT = "compact"


def content_vectors(values: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, sum of dims) unit vectors of the frozen features themselves: each present modality's vector
    normalised, absent ones zero, side by side, normalised again (the space content kNN ranks in)."""
    parts = [torch.nn.functional.normalize(values[m].float(), dim=-1) * present[m].unsqueeze(-1)
             for m in values]
    return torch.nn.functional.normalize(torch.cat(parts, dim=-1), dim=-1)


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

    def select(self, modalities: Iterable[str]) -> "Features":
        """The same items with only `modalities` (a model trained on text alone, over a catalog with images)."""
        wanted = list(dict.fromkeys(modalities))
        missing = [m for m in wanted if m not in self.values]
        if missing or not wanted:
            raise ValueError(f"modalities {', '.join(missing) or '(none)'} not among the features' "
                             f"{', '.join(self.modalities)}")
        return Features(self.encoder, {m: self.values[m] for m in wanted},
                        {m: self.present[m] for m in wanted}, self.fingerprint)

    def to(self, device: torch.device | str) -> "Features":
        """The same features on `device`."""
        return Features(self.encoder, {m: v.to(device) for m, v in self.values.items()},
                        {m: p.to(device) for m, p in self.present.items()}, self.fingerprint)

    def save(self, path: str | Path, *, half: bool = False) -> Path:
        """Atomically write a safetensors file (compact layout) with encoder and fingerprint metadata;
        `half` stores fp16 values (`load` casts them back to float32)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for m in self.modalities:
            mask = self.present[m].bool()
            if bool(mask.any()):  # a modality no item has is stored as dims alone
                rows = self.values[m][mask]
                tensors[m] = (rows.float().half() if half else rows.float()).contiguous()
                tensors[f"{m}_present"] = mask.to(torch.uint8).contiguous()
        meta = {"encoder": self.encoder, "fingerprint": self.fingerprint, "dims": json.dumps(self.dims),
                "layout": LAYOUT, "n_items": str(len(self))}
        # A per-process temp name: two extractions of one data set never write the same file.
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Features":
        """Read a file written by `save` (either layout)."""
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        if meta.get("layout") != LAYOUT:  # the dense layout: every modality stored with one row per item
            mods = [m for m in MODALITIES if m in t]
            return cls(meta.get("encoder", ""), {m: t[m].float() for m in mods},
                       {m: t[f"{m}_present"].bool() for m in mods}, meta.get("fingerprint", ""))
        dims = {m: int(d) for m, d in json.loads(meta.get("dims", "{}")).items()}
        n = int(meta["n_items"])
        values, present = {}, {}
        for m in (m for m in MODALITIES if m in dims):
            if m not in t:
                values[m] = torch.zeros(1, dims[m]).expand(n, dims[m])
                present[m] = torch.zeros(n, dtype=torch.bool)
                continue
            mask = t[f"{m}_present"].bool()
            rows = t[m].float()
            if rows.shape != (int(mask.sum()), dims[m]) or mask.shape != (n,):
                raise ValueError(f"{path.name}: {m} holds {tuple(rows.shape)} rows for {int(mask.sum())} "
                                 f"present of {n} items")
            if rows.shape[0] == n:
                values[m] = rows
            else:
                values[m] = rows.new_zeros(n, dims[m])
                values[m][mask] = rows
            present[m] = mask
        return cls(meta.get("encoder", ""), values, present, meta.get("fingerprint", ""))


def encoder_slug(name: str) -> str:
    """File-system-safe form of an encoder name (`clip:ViT-B-32:openai` -> `clip-ViT-B-32-openai`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def cache_path(data_dir: str | Path, encoder: str) -> Path:
    """Where the feature cache of `encoder` lives inside a prepared data set."""
    return Path(data_dir) / "features" / f"{encoder_slug(encoder)}.safetensors"


# --------------------------------------------------------------------------- extraction
def _cached(path: Path, encoder: str, fingerprint: str, n: int | None) -> Features | None:
    """The features in `path` when they were made by `encoder` for this exact catalog, else None."""
    if not path.is_file():
        return None
    try:
        feats = Features.load(path)
    except Exception as e:  # a truncated or foreign file is recomputed, never trusted
        warnings.warn(f"ignoring unreadable feature cache {path}: {e}", stacklevel=3)
        return None
    if feats.encoder != encoder or feats.fingerprint != fingerprint or (n is not None and len(feats) != n):
        return None
    return feats


def _open_image(path: Path) -> "Image.Image":
    """A fully decoded RGB copy of the image file (first frame of animations)."""
    from PIL import Image

    with Image.open(path) as im:
        im.seek(0)
        im.load()
        return to_rgb(im)


def _try_open_image(path: Path) -> "Image.Image | Exception":
    """`_open_image(path)`, or the exception that it raised (for a thread pool that must not stop)."""
    try:
        return _open_image(path)
    except Exception as e:
        return e


def extract(data: "Dataset | Catalog", encoder: "str | Encoder" = "offline", batch_size: int = 64,
            device: str | torch.device | None = None, force: bool = False, cache: bool = True,
            progress: bool = True, checkpoint_seconds: float = 120.0,
            stats: dict[str, Any] | None = None) -> Features:
    """Encode every item of a data set or catalog with a frozen encoder, reusing the on-disk cache when valid.

    Items without text (blank) or without a readable image get a zero row and
    `present == False`; an unreadable image also raises a warning. The cache
    (`cache_path(root, encoder)`) is used only when its encoder name and catalog
    fingerprint match; long runs leave a `.partial` file every
    `checkpoint_seconds` so that an interrupted extraction resumes where it stopped.
    `stats`, when given, receives `cached`, `encoded`, `path` and the seconds spent
    loading (`load_s`), encoding in all (`encode_s`), on text (`text_s`) and on images (`image_s`).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    catalog = data if isinstance(data, Catalog) else data.catalog
    root = getattr(data, "root", None) or catalog.root
    name = encoder if isinstance(encoder, str) else encoder.name
    n = len(catalog)
    fingerprint = catalog.fingerprint()
    path = cache_path(root, name) if cache and root is not None else None
    info = stats if stats is not None else {}
    info.update(cached=False, encoded=0, load_s=0.0, encode_s=0.0, text_s=0.0, image_s=0.0, path=path)

    if path is not None and not force:
        hit = _cached(path, name, fingerprint, n)
        if hit is not None:
            info["cached"] = True
            return hit

    t0 = time.perf_counter()
    if isinstance(encoder, str):
        enc = encoders.get_encoder(encoder, device=device)
    else:
        enc = encoder
    mods = [m for m in MODALITIES if m in enc.dims]
    if not mods:
        raise ValueError(f"encoder {name!r} encodes neither text nor images")
    if callable(getattr(enc, "load", None)):  # lazy encoders: keep loading out of the encoding rate
        enc.load(tuple(mods))
    info["load_s"] = time.perf_counter() - t0
    texts = catalog.texts()
    # A modality no item can have (a titles-only catalog's images) never gets an (N, D) block of zeros.
    possible = {"text": any(t.strip() for t in texts), "image": any(it.image for it in catalog)}
    values = {m: torch.zeros(n, enc.dims[m], dtype=torch.float32) if possible[m]
              else torch.zeros(1, enc.dims[m]).expand(n, enc.dims[m]) for m in mods}
    present = {m: torch.zeros(n, dtype=torch.bool) for m in mods}

    start = 0
    partial = path.with_name(path.name.replace(".safetensors", ".partial.safetensors")) if path else None
    if partial is not None and not force:
        earlier = _cached(partial, name, fingerprint, None) if partial.is_file() else None
        if earlier is not None and 0 < len(earlier) < n and earlier.dims == {m: enc.dims[m] for m in mods}:
            start = len(earlier)
            for m in mods:
                if possible[m]:
                    values[m][:start] = earlier.values[m]
                present[m][:start] = earlier.present[m]

    t1 = last_save = time.perf_counter()
    bar = tqdm(total=n, initial=start, unit="item", desc=f"extract {name}", disable=not progress)
    if start and progress:
        tqdm.write(f"resuming {name} extraction at item {start:,} of {n:,} ({partial.name})")
    done = start

    def checkpoint() -> None:
        Features(name, {m: v[:done] for m, v in values.items()}, {m: mask[:done] for m, mask in present.items()},
                 fingerprint).save(partial)

    try:
        for lo in range(start, n, batch_size):
            hi = min(lo + batch_size, n)
            tb = time.perf_counter()
            if "text" in mods and possible["text"]:
                rows = [i for i in range(lo, hi) if texts[i].strip()]
                if rows:
                    values["text"][rows] = enc.encode_text([texts[i] for i in rows]).float()
                    present["text"][rows] = True
            ti = time.perf_counter()
            info["text_s"] += ti - tb
            if "image" in mods and possible["image"]:
                paths = [(i, p) for i in range(lo, hi) if (p := catalog.image_path(i)) is not None]
                # JPEG/PNG decoding releases the GIL: one thread per core the encoder will use next
                opened = thread_map(_try_open_image, [p for _, p in paths])
                rows, images = [], []
                for (i, p), im in zip(paths, opened):
                    if isinstance(im, Exception):  # one bad file must not stop a catalog-wide run
                        warnings.warn(f"item {catalog[i].id!r}: image {p} is unreadable, "
                                      f"treated as missing ({type(im).__name__}: {im})", stacklevel=2)
                    else:
                        images.append(im)
                        rows.append(i)
                if rows:
                    values["image"][rows] = enc.encode_image(images).float()
                    present["image"][rows] = True
            info["image_s"] += time.perf_counter() - ti
            bar.update(hi - lo)
            info["encoded"] += hi - lo
            done = hi
            if partial is not None and hi < n and time.perf_counter() - last_save > checkpoint_seconds:
                checkpoint()
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        # Keep every finished batch: the next run resumes right here instead of at the last checkpoint.
        bar.close()
        if partial is not None and start < done < n:
            checkpoint()
        info["interrupted_at"] = done
        raise
    bar.close()
    info["encode_s"] = time.perf_counter() - t1

    feats = Features(name, values, present, fingerprint)
    if path is not None:
        feats.save(path)
        if partial is not None:
            partial.unlink(missing_ok=True)
    return feats


def load_features(data_dir: str | Path, encoder: str, catalog: "Catalog | None" = None, *,
                  fingerprint: str | None = None) -> Features:
    """The cached features of `encoder` for the prepared data set in `data_dir`, checked against its catalog
    (`fingerprint`: the catalog's, when the caller has computed it already)."""
    data_dir = Path(data_dir)
    path = cache_path(data_dir, encoder)
    fix = f"run `dtrec extract {data_dir} --encoder {encoder}`"
    if not path.is_file():
        raise FileNotFoundError(f"no {encoder!r} features for {data_dir} ({path} is missing): {fix}")
    if catalog is None:
        catalog = Dataset.load(data_dir).catalog
    feats = _cached(path, encoder, fingerprint or catalog.fingerprint(), len(catalog))
    if feats is None:
        raise FileNotFoundError(f"the {encoder!r} features in {path} are stale (the catalog or encoder changed): {fix}")
    return feats
