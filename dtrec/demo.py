"""`dtrec build-demo`: the embedded default demo folder (assets/demo) from a prepared data set and a checkpoint.

This module is the one writer of demo folders: `write_demo_folder` writes the layout
that `dtrec.service.Recommender.from_folder` reads, and `build_demo` chooses what goes in
it for a public demo: poster thumbnails no wider than `thumb_size`, fp16 weights and
features (half the download, cast back to float32 on load), at most 300 real
test users' histories cut to the model's window, the run's evaluation table, a
model card and a data notice. The folder is built beside `out` and swapped in
whole, so a failed build never leaves a half-written demo behind.

Demo folder layout::

    DIR/model/config.json, DIR/model/model.safetensors     DualTower checkpoint
    DIR/catalog/items.parquet, DIR/catalog/images/*.jpg     catalog (dtrec.data.catalog layout), thumbnails
    DIR/catalog/features/<encoder>.safetensors              raw encoder features (dtrec.features)
    DIR/item_embeddings.safetensors   the item tower's embeddings of the catalog, keyed (metadata "key")
                          by catalog, features and weights: a start with a fresh store reads them
                          instead of running the item tower; a stale file is recomputed and rewritten
    DIR/histories.json    real test users' histories (lists of item ids)
    DIR/results.json      evaluation table {model: {"valid": {...}, "test": {...}, "cold_start": {...}}}
    DIR/README.md, DIR/NOTICE.md   model card and data notice
"""

from __future__ import annotations

import json
import random
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dtrec.data.catalog import Catalog, Dataset, Item
from dtrec.encoders.base import to_rgb
from dtrec.features import Features, cache_path, load_features
from dtrec.model import DualTower
from dtrec.modelcard import check_results, make_model_card, movielens_release
from dtrec.results import metric_table
from dtrec.serving.encoding import item_tower
from dtrec.serving.sync import (ITEM_EMBEDDINGS, catalog_fingerprint, item_embeddings_key, save_item_embeddings,
                                state_fingerprint)

MAX_HISTORIES = 300  # the data notice promises no more than this many ratings-derived histories
POSTER_ASPECT = 1.5  # height / width of a film poster (2:3)

MOVIELENS_NOTICE = """# Data notice

This demo folder is derived from public research data. It holds **no rating
file**; what it holds, and under which terms:

- **{release}** (GroupLens Research, University of Minnesota; F. M. Harper
  and J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4),
  2015). Used for research under its licence: acknowledge GroupLens, no
  endorsement by the University of Minnesota or GroupLens implied, no
  redistribution of the data without permission. The catalog here keeps only
  each movie's title, year and genres, plus embeddings derived from them.
  `histories.json` holds {n_histories} item-id sequences (at most {history_len}
  items each, no user ids, no ratings, no timestamps) derived from {ratings}'s
  test users so that the demo can show "a real user's history"; it is a small
  derived sample, not the rating data. Get the data itself from
  {url}.
- **Movie posters** are the copyright of their owners. They were collected by the
  public repository `antonsteenvoorden/ml1m-images` (keyed by MovieLens-1M ids{poster_join})
  and appear here only as small thumbnails (at most {thumb_size} px wide) in a
  non-commercial research demo.
  {n_posters} of {n_items} movies have one; the others are text-only items.
- The model weights and item embeddings were trained on the data above by dtrec.
"""


# The MovieLens releases a demo is built from: the notice's name, its ratings file, its page, and how the posters
# (keyed by MovieLens-1M ids) reach its movies.
MOVIELENS_RELEASES = {
    "100k": ("MovieLens 100K", "`u.data`", "https://grouplens.org/datasets/movielens/100k/",
             " and joined to MovieLens-100K by title and year"),
    "1m": ("MovieLens 1M", "`ratings.dat`", "https://grouplens.org/datasets/movielens/1m/", ""),
}


def movielens_notice(release: str, **counts: int) -> str:
    """`MOVIELENS_NOTICE` for `release` ("100k" or "1m") with the folder's counts filled in."""
    name, ratings, url, poster_join = MOVIELENS_RELEASES[release]
    return MOVIELENS_NOTICE.format(release=name, ratings=ratings, url=url, poster_join=poster_join, **counts)


class DemoBuildError(ValueError):
    """A demo folder that cannot be built from the given inputs (one sentence)."""


@dataclass
class DemoBuildConfig:
    """Inputs and choices of `dtrec build-demo`."""

    data: str  # prepared data set (dtrec prepare), with the checkpoint encoder's features extracted
    checkpoint: str  # DualTower folder (config.json + model.safetensors)
    out: str = "assets/demo"
    results: str | None = None  # results.json of the training run; default: one beside the checkpoint
    thumb_size: int = 160  # maximum thumbnail width in px
    jpeg_quality: int = 88  # of the thumbnails: lower it to fit a larger catalog in the size budget
    n_histories: int = MAX_HISTORIES
    history_len: int | None = None  # default: the model's max_len
    seed: int = 0
    half: bool = True  # fp16 weights and features
    max_mb: float = 40.0  # warn above this folder size

    def __post_init__(self):
        if not 32 <= self.thumb_size <= 1024:
            raise DemoBuildError(f"--thumb-size must be between 32 and 1024 px, not {self.thumb_size}.")
        if not 30 <= self.jpeg_quality <= 95:
            raise DemoBuildError(f"--jpeg-quality must be between 30 and 95, not {self.jpeg_quality}.")
        if not 0 <= self.n_histories <= MAX_HISTORIES:
            raise DemoBuildError(f"--histories must be between 0 and {MAX_HISTORIES}, not {self.n_histories}.")


def sample_histories(dataset: Dataset, n: int, length: int, seed: int = 0) -> list[list[str]]:
    """`n` test users' histories (target withheld), each cut to its last `length` items, as item ids."""
    cases = [h for h, _ in dataset.eval_cases("test") if len(h) >= 2]
    random.Random(seed).shuffle(cases)
    cat = dataset.catalog
    return [[cat[i].id for i in h[-length:]] for h in cases[:n]]


def find_results(checkpoint: str | Path, results: str | Path | None) -> dict:
    """The evaluation table: `results` if given, else the nearest results.json in, beside or above the
    checkpoint (a recipe writes OUT/results.json for OUT/dtrec/best), else {}.

    A recipe's results.json may carry a "meta" entry (commit, seed, commands); it is kept for the
    folder's results.json and left out of the checked metric table.
    """

    ckpt = Path(checkpoint).resolve()
    paths = [Path(results)] if results else [ckpt / "results.json", ckpt.parent / "results.json",
                                             ckpt.parent.parent / "results.json"]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        if results:
            raise DemoBuildError(f"results file {results} does not exist.")
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DemoBuildError(f"results file {path} is not valid JSON (line {e.lineno}).") from None
    if not isinstance(data, dict):
        raise DemoBuildError(f"results file {path} must map model names to their splits' metrics.")
    table = metric_table(data)
    if table:
        check_results(table, str(path))
    return data




def _thumb_sources(catalog: Catalog, thumb_size: int, tmp: Path) -> Catalog:
    """The catalog with wide images pre-shrunk (lossless) so that the writer's square box keeps them narrow."""
    box = round(thumb_size * POSTER_ASPECT)
    items = []
    for i, it in enumerate(catalog):
        p = catalog.image_path(i)
        p = p.resolve() if p is not None else None  # the catalog root may be relative to the cwd
        image = str(p) if p is not None else None
        if p is not None and p.is_file():
            with Image.open(p) as im:
                w, h = im.size
                scale = min(1.0, box / max(w, h))
                if w * scale > thumb_size:  # wider than a poster: cap the width instead
                    im.seek(0)
                    im.load()
                    small = im.convert("RGB")
                    small.thumbnail((thumb_size, box), Image.Resampling.LANCZOS)
                    # absolute: a relative path would be read against the catalog root, not the cwd
                    image = str((tmp / f"{i}.png").resolve())
                    small.save(image)
        items.append(Item(it.id, it.title, it.text, image, dict(it.meta)))
    return Catalog(items, root=catalog.root)


def _model_card(cfg: DemoBuildConfig, dataset: Dataset, model: torch.nn.Module, results: dict,
                n_hist: int, history_len: int) -> str:
    """The checkpoint's model card plus what this demo folder holds."""
    card = str(make_model_card(cfg.checkpoint, results if metric_table(results) else None, dataset_name=dataset.name))
    c = model.config
    return card.rstrip() + f"""

## This demo folder

Built by `dtrec build-demo --data {cfg.data} --checkpoint {cfg.checkpoint} --thumb-size {cfg.thumb_size} --jpeg-quality {cfg.jpeg_quality}`;
served by `python app.py` (or `dtrec serve`), read by `dtrec.service.Recommender.from_folder`.

| path | content |
| --- | --- |
| `model/` | the DualTower ({c.n_layers} layers, d={c.d_model}, `{c.encoder}` features){", fp16 weights" if cfg.half else ""} |
| `catalog/items.parquet` | {len(dataset.catalog)} items: id, title, text, image, year and genres |
| `catalog/images/` | poster thumbnails, at most {cfg.thumb_size} px wide (JPEG, quality {cfg.jpeg_quality}) |
| `catalog/features/` | raw `{c.encoder}` features of every item{" (fp16)" if cfg.half else ""} |
| `item_embeddings.safetensors` | the item tower's embeddings of every item, keyed by catalog, weights and features (recomputed at start-up when stale) |
| `histories.json` | {n_hist} test users' histories, last {history_len} items each ("load a real user's history") |
| `results.json` | the evaluation table above |
| `NOTICE.md` | data sources and their terms |
"""


def build_demo(cfg: DemoBuildConfig) -> Path:
    """Write the demo folder `cfg.out` (swapped in whole) and return it."""
    out = Path(cfg.out)
    dataset = Dataset.load(cfg.data)
    model = DualTower.from_pretrained(str(cfg.checkpoint))
    features = load_features(cfg.data, model.config.encoder, dataset.catalog)
    results = find_results(cfg.checkpoint, cfg.results)
    length = int(cfg.history_len or model.config.max_len)
    histories = sample_histories(dataset, cfg.n_histories, length, cfg.seed)
    readme = _model_card(cfg, dataset, model, results, len(histories), length)
    cat = dataset.catalog
    n_posters = sum(1 for i in range(len(cat)) if cat.image_path(i) is not None)
    release = movielens_release(dataset.name)
    notice = None  # the writer's generic notice: MovieLens terms would be wrong for another data set
    if release is not None:
        notice = movielens_notice(release, n_histories=len(histories), history_len=length, thumb_size=cfg.thumb_size,
                                  n_posters=n_posters, n_items=len(cat))

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.build-") as tmp:
        tmp = Path(tmp)
        (tmp / "wide").mkdir()
        src = Dataset(_thumb_sources(cat, cfg.thumb_size, tmp / "wide"), dataset.interactions, name=dataset.name,
                      cold_items=dataset.cold_items, info=dataset.info, root=dataset.root)
        staged = tmp / "demo"
        write_demo_folder(src, features, model, staged, histories=histories, results=results, readme=readme,
                          notice=notice, thumbnail_px=round(cfg.thumb_size * POSTER_ASPECT), seed=cfg.seed,
                          half=cfg.half, jpeg_quality=cfg.jpeg_quality)
        old = tmp / "old"
        if out.exists():
            out.replace(old)
        staged.replace(out)
    return out


def folder_mb(path: str | Path) -> float:
    """Total size of the files under `path` in MB."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e6


# --------------------------------------------------------------------------- the writer
def write_demo_folder(dataset: Dataset, features: Features, model: Any, out: str | Path,
                      histories: list[list[str]] | None = None, results: dict | str | Path | None = None, *,
                      n_histories: int = 200, readme: str | None = None, notice: str | None = None,
                      thumbnail_px: int = 256, seed: int = 0, half: bool = False, jpeg_quality: int = 88) -> Path:
    """Write a demo folder (layout in the module docstring) from a prepared data set, its features and a
    DualTower (or a checkpoint folder). Histories default to `n_histories` test users' histories; `half`
    writes fp16 weights and features. Last come the carried item embeddings (`write_item_embeddings`), made
    from the weights and features as written."""
    out = Path(out)
    if isinstance(model, (str, Path)):
        model = DualTower.from_pretrained(str(model))
    model.check_features(features)
    catalog = dataset.catalog
    if len(features) != len(catalog):
        raise ValueError(f"features have {len(features)} rows but the catalog has {len(catalog)} items")
    out.mkdir(parents=True, exist_ok=True)

    model_dir = out / "model"
    model.save_pretrained(str(model_dir))
    if half:  # the loader casts back to float32; halves the download
        st = model_dir / "model.safetensors"
        save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(str(st)).items()}, str(st))

    cat_dir = out / "catalog"
    img_dir = cat_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for i in tqdm(range(len(catalog)), desc="thumbnails", unit="item"):
        it = catalog[i]
        rel = None
        p = catalog.image_path(i)
        if p is not None and not p.is_file():
            warnings.warn(f"item {it.id!r}: image {p} does not exist, shown without one", stacklevel=2)
        elif p is not None:
            try:
                with Image.open(p) as im:
                    im.seek(0)
                    im.load()
                    rgb = to_rgb(im)
                rgb.thumbnail((thumbnail_px, thumbnail_px), Image.Resampling.LANCZOS)
                rel = f"images/{i}.jpg"
                rgb.save(cat_dir / rel, format="JPEG", quality=jpeg_quality)
            except Exception as e:  # a broken file costs the item its picture, not the build
                warnings.warn(f"item {it.id!r}: image {p} unreadable, shown without one ({e})", stacklevel=2)
        items.append(Item(it.id, it.title, it.text, rel, dict(it.meta)))
    demo_catalog = Catalog(items, root=cat_dir)
    tmp = cat_dir / "items.parquet.tmp"
    demo_catalog.to_frame().to_parquet(tmp, index=False)
    tmp.replace(cat_dir / "items.parquet")
    # features were extracted from the full-size images; they are kept as they are and bound to this catalog
    name = model.config.encoder
    Features(name, features.values, features.present, demo_catalog.fingerprint()).save(cache_path(cat_dir, name),
                                                                                         half=half)

    if histories is None:
        cases = [h for h, _ in dataset.eval_cases("test") if len(h) >= 2]
        random.Random(seed).shuffle(cases)
        histories = [[catalog[i].id for i in h[-200:]] for h in cases[:n_histories]]
    else:
        for h in histories:
            for iid in h:
                if not demo_catalog.has(iid):
                    raise ValueError(f"history item {iid!r} is not in the catalog")
    (out / "histories.json").write_text(json.dumps(histories))
    if isinstance(results, (str, Path)):
        results = json.loads(Path(results).read_text())
    (out / "results.json").write_text(json.dumps(results or {}, indent=2))
    (out / "README.md").write_text(readme or _default_card(dataset, model, results or {}))
    (out / "NOTICE.md").write_text(notice or dataset.info.get("notice") or
                                   f"# Data notice\n\nCatalog and histories derived from {dataset.name!r}; "
                                   "see the source's own licence before reusing them.\n")
    write_item_embeddings(out)
    return out


def write_item_embeddings(folder: str | Path) -> Path:
    """Write a demo folder's carried item embeddings (`ITEM_EMBEDDINGS`), computed from the folder's own
    weights and features exactly as `Recommender` reads them, so that a fresh store can skip the item tower."""
    folder = Path(folder)
    model = DualTower.from_pretrained(str(folder / "model")).eval()
    cat_dir = folder / "catalog"
    catalog = Catalog.from_frame(pd.read_parquet(cat_dir / "items.parquet"), root=cat_dir)
    catalog_fp = catalog.fingerprint()
    features = load_features(cat_dir, model.config.encoder, catalog, fingerprint=catalog_fp)
    model.check_features(features)
    features = features.select(dict(model.config.modality_dims))
    key = item_embeddings_key(catalog_fingerprint(catalog_fp, features), state_fingerprint(model), features)
    return save_item_embeddings(folder / ITEM_EMBEDDINGS, item_tower(model, features), key)


def _default_card(dataset: Dataset, model: Any, results: dict) -> str:
    c = model.config
    lines = [f"# dtrec demo: {dataset.name}", "",
             f"DualTower (d={c.d_model}, {c.n_layers} layers, {c.objective}) over `{c.encoder}` features; "
             f"{len(dataset.catalog)} items.", ""]
    if results:
        lines += ["| model | split | " + " | ".join(["recall@10", "ndcg@10", "mrr"]) + " |", "|---|---|---|---|---|"]
        for name, splits in results.items():
            for split, m in (splits or {}).items():
                if isinstance(m, dict):
                    lines.append(f"| {name} | {split} | " + " | ".join(
                        f"{m.get(k, float('nan')):.4f}" for k in ("recall@10", "ndcg@10", "mrr")) + " |")
    return "\n".join(lines) + "\n"
