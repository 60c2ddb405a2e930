"""The data model: a `Catalog` of items known only by content, user `Interactions`,
and `Dataset`, the prepared on-disk form that every later stage reads.

On-disk layout of a prepared data set (written by `Dataset.save`, read by `Dataset.load`)::

    DIR/
      meta.json          name, source, counts, preprocessing settings, cold-start items
      items.parquet      one row per item, row i = item index i everywhere in dtrec:
                         id (str), title (str), text (str), image (str|null: path
                         relative to DIR), meta (JSON str: year, genres, ...)
      sequences.parquet  one row per user: user (str), items (list<int32>, oldest
                         first), timestamps (list<int64>; may be all zero)
      images/            image files referenced by items.parquet
      features/          per-encoder feature caches (see dtrec.features)

Item indices are dense 0..N-1; there is no padding index in stored data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

FORMAT_VERSION = 1


@dataclass
class Item:
    """One item: an id and its content. `image` is an absolute path or None."""

    id: str
    title: str
    text: str
    image: str | None = None
    meta: dict = field(default_factory=dict)


def item_text(title: str, text: str) -> str:
    """What a text encoder reads for an item: the title, then the free text.

    Catalog items and uploads both go through here so that the same content
    always yields the same text feature.
    """
    title, text = (title or "").strip(), (text or "").strip()
    if not title or text.startswith(title):
        return text or title
    return f"{title}. {text}" if text else title


class Catalog:
    """Items in index order; `root` resolves relative image paths."""

    def __init__(self, items: Sequence[Item], root: str | Path | None = None):
        self.items: list[Item] = list(items)
        self.root = Path(root) if root is not None else None
        self._index = {it.id: i for i, it in enumerate(self.items)}
        if len(self._index) != len(self.items):
            seen: set[str] = set()
            dup = next(it.id for it in self.items if it.id in seen or seen.add(it.id))
            raise ValueError(f"duplicate item id {dup!r} in catalog")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]

    def __iter__(self):
        return iter(self.items)

    def index_of(self, item_id: str) -> int:
        """Index of an item id; KeyError names the id."""
        try:
            return self._index[item_id]
        except KeyError:
            raise KeyError(f"unknown item id {item_id!r}") from None

    def has(self, item_id: str) -> bool:
        """Whether the catalog holds this id."""
        return item_id in self._index

    def image_path(self, i: int) -> Path | None:
        """Absolute path of item i's image, or None when it has none."""
        img = self.items[i].image
        if not img:
            return None
        p = Path(img)
        if not p.is_absolute() and self.root is not None:
            p = self.root / p
        return p

    def texts(self) -> list[str]:
        """The text fed to a text encoder for each item (see `item_text`)."""
        return [item_text(it.title, it.text) for it in self.items]

    def fingerprint(self) -> str:
        """Content hash of ids, encoder texts and image files; changes when any item changes."""
        h = hashlib.sha256()
        for i, it in enumerate(self.items):
            # Hash what the encoder reads (item_text), so a change in how text is joined invalidates caches.
            h.update(it.id.encode() + b"\0" + item_text(it.title, it.text).encode() + b"\0")
            p = self.image_path(i)
            if p is not None and p.exists():
                h.update(hashlib.sha256(p.read_bytes()).digest())
            else:
                h.update(b"-")
        return h.hexdigest()[:16]

    def to_frame(self) -> pd.DataFrame:
        """The catalog as a DataFrame with the items.parquet columns."""
        return pd.DataFrame(
            {
                "id": [it.id for it in self.items],
                "title": [it.title for it in self.items],
                "text": [it.text for it in self.items],
                "image": [it.image for it in self.items],
                "meta": [json.dumps(it.meta, ensure_ascii=False) for it in self.items],
            }
        )

    @classmethod
    def from_frame(cls, df: pd.DataFrame, root: str | Path | None = None) -> "Catalog":
        """Inverse of `to_frame`."""
        items = [
            Item(
                id=str(r.id),
                title=str(r.title) if r.title is not None else "",
                text=str(r.text) if r.text is not None else "",
                image=(str(r.image) if isinstance(r.image, str) and r.image else None),
                meta=json.loads(r.meta) if isinstance(r.meta, str) and r.meta else {},
            )
            for r in df.itertuples(index=False)
        ]
        return cls(items, root=root)


@dataclass
class Interactions:
    """Per-user histories of item indices, oldest first."""

    users: list[str]
    sequences: list[list[int]]
    timestamps: list[list[int]] | None = None

    def __post_init__(self):
        if len(self.users) != len(self.sequences):
            raise ValueError("users and sequences differ in length")

    def __len__(self) -> int:
        return len(self.users)

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences)

    @classmethod
    def from_events(cls, users: Iterable, items: Iterable[int], timestamps: Iterable[int]) -> "Interactions":
        """Group (user, item, time) events per user; ties in time keep input order."""
        df = pd.DataFrame({"user": list(users), "item": list(items), "ts": list(timestamps)})
        df["order"] = np.arange(len(df))
        df = df.sort_values(["user", "ts", "order"], kind="stable")
        us, seqs, tss = [], [], []
        for u, g in df.groupby("user", sort=False):
            us.append(str(u))
            seqs.append(g["item"].astype(int).tolist())
            tss.append(g["ts"].astype(int).tolist())
        return cls(us, seqs, tss)


@dataclass
class Dataset:
    """A prepared data set: catalog, histories, and the cold-start item set."""

    catalog: Catalog
    interactions: Interactions
    name: str = "dataset"
    cold_items: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    root: Path | None = None

    # -- splits (leave-one-out; docs/design.md "Evaluation protocol") -------------
    def train_sequences(self) -> list[list[int]]:
        """Training part of each history (all but the last two), cold items removed."""
        cold = set(self.cold_items)
        out = []
        for s in self.interactions.sequences:
            t = [i for i in s[:-2] if i not in cold]
            out.append(t)
        return out

    def eval_cases(self, split: str) -> list[tuple[list[int], int]]:
        """(history, target) pairs of 'valid' (second-to-last) or 'test' (last) per user."""
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
        cut = 2 if split == "valid" else 1
        cases = []
        for s in self.interactions.sequences:
            if len(s) < cut + 1:
                continue
            cases.append((s[: len(s) - cut], s[len(s) - cut]))
        return cases

    def cold_cases(self, split: str = "test") -> list[tuple[list[int], int]]:
        """The eval cases whose target is a cold (never trained on) item."""
        cold = set(self.cold_items)
        return [c for c in self.eval_cases(split) if c[1] in cold]

    def training_items(self) -> list[int]:
        """Items that appear in training sequences (what an ID model can learn)."""
        seen = set()
        for s in self.train_sequences():
            seen.update(s)
        return sorted(seen)

    # -- persistence ----------------------------------------------------------------
    def counts(self) -> dict:
        """Counts for `dtrec info`."""
        cat = self.catalog
        return {
            "items": len(cat),
            "users": len(self.interactions),
            "interactions": self.interactions.num_interactions,
            "items_with_image": sum(1 for i in range(len(cat)) if cat[i].image),
            "items_with_text": sum(1 for it in cat if (it.title or it.text)),
            "cold_items": len(self.cold_items),
        }

    def save(self, out: str | Path) -> Path:
        """Write the prepared layout to `out` (images must already live under it)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.catalog.to_frame().to_parquet(out / "items.parquet.tmp", index=False)
        (out / "items.parquet.tmp").replace(out / "items.parquet")
        inter = self.interactions
        ts = inter.timestamps or [[0] * len(s) for s in inter.sequences]
        pd.DataFrame({"user": inter.users, "items": inter.sequences, "timestamps": ts}).to_parquet(
            out / "sequences.parquet.tmp", index=False
        )
        (out / "sequences.parquet.tmp").replace(out / "sequences.parquet")
        meta = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "counts": self.counts(),
            "cold_items": sorted(int(i) for i in self.cold_items),
            **{k: v for k, v in self.info.items() if k not in ("counts", "cold_items", "name")},
        }
        tmp = out / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False))
        tmp.replace(out / "meta.json")
        self.root = out
        self.catalog.root = out
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Dataset":
        """Read a prepared data set; a missing file is named in the error."""
        path = Path(path)
        for f in ("meta.json", "items.parquet", "sequences.parquet"):
            if not (path / f).exists():
                raise FileNotFoundError(f"{path / f} is missing: is {path} a data set written by `dtrec prepare`?")
        meta = json.loads((path / "meta.json").read_text())
        catalog = Catalog.from_frame(pd.read_parquet(path / "items.parquet"), root=path)
        sq = pd.read_parquet(path / "sequences.parquet")
        inter = Interactions(
            users=[str(u) for u in sq["user"]],
            sequences=[list(map(int, s)) for s in sq["items"]],
            timestamps=[list(map(int, t)) for t in sq["timestamps"]],
        )
        info = {k: v for k, v in meta.items() if k not in ("counts", "cold_items", "name")}
        return cls(catalog, inter, name=meta.get("name", path.name), cold_items=list(meta.get("cold_items", [])),
                   info=info, root=path)
