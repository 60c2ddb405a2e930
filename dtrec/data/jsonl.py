"""Reader for a user's own catalog: `items.jsonl` + `interactions.csv` (either may be gzip-compressed).

`items.jsonl`: one JSON object per line, `{"id", "title", "text", "image"}`;
`id` and `title` are required, `text` and `image` optional. `image` is a path
relative to the jsonl file's folder (or absolute); the file is checked to be
an image and copied to `out/images/<n><ext>` under a generated name, so a
given name never becomes a path component of the output.

`interactions.csv`: header `user,item,timestamp`, then one event per row;
`timestamp` is an integer (or a number) ordering each user's events.

Items that no interaction uses stay in the catalog unless a k-core is asked
for: an ID-free recommender can still retrieve them. Without an interactions
file the result is a catalog alone (no users): enough to extract features,
serve, and score a model zero-shot once interactions over the same items are
prepared into the same folder (the feature cache carries over).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dtrec.data import preprocess
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.data.errors import DataFormatError, require_file
from dtrec.data.registry import PrepareOptions, register_reader

IMAGE_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
MAX_TEXT = 20_000


def open_text(path: Path) -> IO[str]:
    """`path` opened for reading text (UTF-8), decompressed on the fly when it is gzip data (by content, not name)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    if gz:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _lines(path: Path, fh: IO[str]):
    """Lines of `fh`, with a broken compressed stream or non-UTF-8 text reported as a DataFormatError."""
    ln = 0
    try:
        for ln, line in enumerate(fh, 1):
            yield line
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"cannot be read after line {ln} ({type(e).__name__}: {e})") from None


def _image_format(path: Path) -> str | None:
    """PIL's format name of an image file, or None when it is not a readable image."""
    try:
        with Image.open(path) as im:
            im.verify()
            return im.format
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def read_items(path: str | Path) -> list[Item]:
    """Items of an `items.jsonl` file; `image` holds the checked absolute source path."""
    path = require_file(path)
    items: list[Item] = []
    seen: dict[str, int] = {}
    with open_text(path) as fh:
        for ln, line in enumerate(_lines(path, fh), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"not valid JSON ({e.msg})", ln) from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, "expected a JSON object", ln)
            iid, title = obj.get("id"), obj.get("title")
            if not isinstance(iid, (str, int)) or isinstance(iid, bool) or str(iid).strip() == "":
                raise DataFormatError(path, "missing or empty 'id'", ln)
            iid = str(iid).strip()
            if not isinstance(title, str) or not title.strip():
                raise DataFormatError(path, "missing or empty 'title'", ln)
            text = obj.get("text") or ""
            if not isinstance(text, str) or len(text) > MAX_TEXT:
                raise DataFormatError(path, f"'text' must be a string of at most {MAX_TEXT} characters", ln)
            if iid in seen:
                raise DataFormatError(path, f"item id {iid!r} already on line {seen[iid]}", ln)
            seen[iid] = ln
            image = None
            if obj.get("image"):
                if not isinstance(obj["image"], str):
                    raise DataFormatError(path, "'image' must be a path", ln)
                src = Path(obj["image"])
                src = src if src.is_absolute() else path.parent / src
                if not src.is_file():
                    raise DataFormatError(path, f"image file not found: {src}", ln)
                fmt = _image_format(src)
                if fmt not in IMAGE_SUFFIX:
                    raise DataFormatError(path, f"{src.name} is not a JPEG, PNG, WebP, GIF or BMP image", ln)
                image = str(src.resolve())
            meta = {k: v for k, v in obj.items() if k not in ("id", "title", "text", "image")}
            items.append(Item(id=iid, title=title.strip(), text=text.strip(), image=image, meta=meta))
    if not items:
        raise DataFormatError(path, "holds no items")
    return items


def read_events(path: str | Path, catalog: Catalog) -> tuple[list[str], list[int], list[int]]:
    """(users, item indices, timestamps) of an `interactions.csv` file, in file order."""
    path = require_file(path)
    users, items, ts = [], [], []
    with open_text(path) as fh:
        reader = csv.reader(_lines(path, fh))
        header = next(reader, None)
        if header is None:
            raise DataFormatError(path, "is empty", 1)
        cols = [h.strip().lower() for h in header]
        missing = [c for c in ("user", "item", "timestamp") if c not in cols]
        if missing:
            raise DataFormatError(path, f"header lacks the column(s) {', '.join(missing)} "
                                        "(expected 'user,item,timestamp')", 1)
        cu, ci, ct = cols.index("user"), cols.index("item"), cols.index("timestamp")
        for row in reader:
            ln = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(cols):
                raise DataFormatError(path, f"expected {len(cols)} fields, got {len(row)}", ln)
            user, item, t = row[cu].strip(), row[ci].strip(), row[ct].strip()
            if not user:
                raise DataFormatError(path, "empty user", ln)
            if not catalog.has(item):
                raise DataFormatError(path, f"unknown item id {item!r} (not in the items file)", ln)
            try:
                tv = int(t) if t.lstrip("-").isdigit() else int(float(t))
            except ValueError:
                raise DataFormatError(path, f"timestamp {t!r} is not a number", ln) from None
            users.append(user)
            items.append(catalog.index_of(item))
            ts.append(tv)
    return users, items, ts


def read_jsonl(items_path: str | Path, interactions_path: str | Path | None, out: str | Path, kcore: int = 0,
               min_len: int = 3, name: str | None = None) -> Dataset:
    """Read `items.jsonl` (+ `interactions.csv` when given), copy images into `out/images`, return the Dataset.

    With `interactions_path=None` the Dataset is the catalog alone, with no users. The data set is `name`, or
    else named after the items file's folder.
    """
    out = Path(out)
    items_path = require_file(items_path)
    if interactions_path is not None:
        interactions_path = require_file(interactions_path)
    elif kcore > 1:
        raise ValueError("--kcore filters interactions: it needs --interactions")
    items = read_items(items_path)
    catalog = Catalog(items, root=out)
    if interactions_path is None:
        inter = Interactions([], [], [])
    else:
        users, idx, ts = read_events(interactions_path, catalog)
        mask = preprocess.kcore(users, idx, kcore)
        inter = Interactions.from_events([u for u, k in zip(users, mask) if k], [i for i, k in zip(idx, mask) if k],
                                         [t for t, k in zip(ts, mask) if k])
        inter = preprocess.drop_short(inter, min_len)
        if not len(inter):
            hint = f" after the {kcore}-core filter (try a smaller --kcore)" if kcore > 1 else ""
            raise DataFormatError(interactions_path, f"no user has {min_len} or more interactions{hint}")
    catalog, inter = preprocess.compact(catalog, inter, keep_unused=kcore <= 0)
    # Copy only the images of kept items, named by their final index and their checked format.
    (out / "images").mkdir(parents=True, exist_ok=True)
    final = []
    for i, it in enumerate(tqdm(catalog.items, desc="images", unit="item", disable=None)):
        if it.image:
            rel = f"images/{i}{IMAGE_SUFFIX[_image_format(Path(it.image))]}"
            shutil.copyfile(it.image, out / rel)
            it = Item(it.id, it.title, it.text, rel, it.meta)
        final.append(it)
    catalog = Catalog(final, root=out)
    info = {"source": {"kind": "jsonl", "items": str(items_path.resolve()),
                       "interactions": str(interactions_path.resolve()) if interactions_path else None},
            "kcore": kcore}
    return Dataset(catalog, inter, name=name or items_path.parent.name or "jsonl", info=info, root=out)



@dataclass(kw_only=True)
class JsonlOptions(PrepareOptions):
    """The options of `dtrec prepare jsonl`."""

    items: Path = field(metadata={"help": "items.jsonl or items.jsonl.gz"})
    interactions: Path | None = field(default=None, metadata={
        "help": "interactions.csv or .csv.gz (omit it for a catalog without users)"})
    name: str | None = field(default=None, metadata={
        "help": "the data set's name, which model cards and demo notices take the data's terms from "
                "(e.g. movielens-1m); default: the items file's folder"})


@register_reader("jsonl", "your own catalog: items.jsonl + interactions.csv (plain or .gz)", JsonlOptions)
def read(options: JsonlOptions, out: Path) -> Dataset:
    """`read_jsonl` with the options of `dtrec prepare jsonl`."""
    if options.interactions is None and options.cold_fraction:
        raise ValueError("--cold-fraction holds out items from interactions: it needs --interactions")
    return read_jsonl(options.items, options.interactions, out, kcore=options.kcore, name=options.name)
