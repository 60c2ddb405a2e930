"""`ItemIndex`: FAISS nearest-neighbour search over item-tower embeddings, by int64 id.

Vectors are L2-normalised on the way in (items and queries), so scores are cosine
similarities. Every kind is wrapped in `faiss.IndexIDMap2`, so ids are the store's
row numbers and `reconstruct(id)` works.

Kinds:

- ``flat``: exact inner product (`IndexFlatIP`).
- ``hnsw``: `IndexHNSWFlat` over inner product; `ef_search` trades recall for speed.
  FAISS cannot delete from HNSW graphs, so `remove` hides ids (tombstones filtered
  out of results) and the graph is rebuilt from the kept vectors once tombstones
  pass 10 % of the index, and before every `save`.
- ``ivfpq``: `IndexIVFPQ` (inner product). It must be trained, so it is used only
  when the index is *built* from at least `ivfpq_min_items` vectors (default 10,000,
  enough for `nlist` ~ sqrt(N) coarse centroids and 256-entry PQ codebooks); below that
  the index is exact (flat), and `effective_kind` says so. Items added later are
  encoded with the trained quantizers; rebuilding retrains. 8-bit PQ codes alone rank
  poorly (recall@10 ~0.3 on 512-d embeddings), so by default (`refine="sq8"`) the
  `k_factor * k` best PQ candidates are re-ranked with 8-bit scalar-quantised copies of
  the vectors (`IndexRefine`): ~d + d/8 bytes a vector instead of 4d. `refine="flat"`
  re-ranks with exact vectors, `"none"` returns PQ order. A refined index cannot
  delete in place, so it hides removed ids like HNSW does and drops them on `save`.

Files: `save(path)` writes the FAISS index with `faiss.write_index` to a temporary
file and renames it over `path`, then writes `path + ".json"` (kind, parameters, a
SHA-256 of the index file and a caller-supplied `stamp`). `ItemIndex.load` checks the
pair and raises `IndexFileError` when either is missing, corrupt or mismatched, so
the caller (`ItemStore.open_index`) rebuilds from the store.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dtrec.config import IndexSpec
from dtrec.fileio import atomic_write_bytes

_FORMAT = 1


class IndexFileError(ValueError):
    """A saved index file is missing, unreadable or does not match its metadata."""


def _as_ids(ids: Any) -> np.ndarray:
    ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    if ids.size and ids.min() < 0:
        raise ValueError("index ids must be non-negative integers")
    return ids


def _as_vectors(x: Any, dim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor without importing torch here
        x = x.detach().float().cpu().numpy()
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or infinite values")
    faiss.normalize_L2(x)
    return x


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pq_subquantizers(dim: int) -> int:
    """Largest m <= dim/8 dividing dim (8 dims per 1-byte code), at least 1."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


class ItemIndex:
    """Inner-product FAISS index of L2-normalised vectors keyed by int64 ids."""

    def __init__(self, dim: int, kind: str = "flat", **params: Any):
        """An empty index of `kind` with the `IndexSpec` parameters `params` (ivfpq starts exact until built/trained)."""
        spec = IndexSpec(kind, **params)
        if dim <= 0:
            raise ValueError(f"index dimension must be positive, not {dim}")
        self.dim = int(dim)
        self.kind = spec.kind
        # a plain dict, read at every search: a caller may tune ef_search / nprobe / k_factor in place
        self.params = spec.params()
        self.effective_kind = "flat" if kind == "ivfpq" else kind
        self._tombstones: set[int] = set()
        self.stamp: dict = {}
        self.index = faiss.IndexIDMap2(self._new_inner(self.effective_kind))

    # -- construction -------------------------------------------------------------
    def _new_inner(self, kind: str, n_train: int = 0) -> faiss.Index:
        p = self.params
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, p["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = p["ef_construction"]
            inner.hnsw.efSearch = p["ef_search"]
            return inner
        # ivfpq: ~sqrt(N) lists, with >= 39 training points per centroid (FAISS's guidance)
        nlist = max(1, min(int(math.sqrt(n_train)), n_train // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        base = faiss.IndexIVFPQ(quantizer, self.dim, nlist, _pq_subquantizers(self.dim), 8,
                                faiss.METRIC_INNER_PRODUCT)
        if p["refine"] == "none":
            inner = base
        else:
            exact = faiss.IndexFlatIP(self.dim) if p["refine"] == "flat" else faiss.IndexScalarQuantizer(
                self.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            inner = faiss.IndexRefine(base, exact)
        return inner  # faiss's Python wrapper keeps `quantizer`, `base` and `exact` alive with `inner`

    def _set_search_params(self, inner: faiss.Index) -> None:
        """Apply `params`' nprobe / k_factor to an (optionally refined) IVF-PQ index."""
        inner = faiss.downcast_index(inner)
        if isinstance(inner, faiss.IndexRefine):
            inner.k_factor = float(self.params["k_factor"])
            inner = faiss.downcast_index(inner.base_index)
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = min(self.params["nprobe"], inner.nlist)

    @property
    def _hides_removed(self) -> bool:
        """Whether removal goes through tombstones (kinds that cannot delete in place)."""
        return self.effective_kind == "hnsw" or (self.effective_kind == "ivfpq" and self.params["refine"] != "none")

    @classmethod
    def build(cls, ids: Any, vectors: Any, kind: str = "flat", **params: Any) -> "ItemIndex":
        """A new index holding `vectors` (N, d) under `ids`; ivfpq is trained here when there are enough."""
        vecs = np.asarray(vectors.detach().float().cpu().numpy() if hasattr(vectors, "detach") else vectors,
                          dtype=np.float32)
        if vecs.ndim != 2:
            raise ValueError(f"expected an (N, d) array of vectors, got shape {tuple(vecs.shape)}")
        index = cls(int(vecs.shape[1]), kind, **params)
        ids = _as_ids(ids)
        if kind == "ivfpq" and len(ids) >= index.params["ivfpq_min_items"]:
            index.train(vecs)
        index.add(ids, vecs)
        return index

    def train(self, vectors: Any) -> None:
        """Train an ivfpq index on `vectors` (replaces its contents; no-op for flat/hnsw)."""
        if self.kind != "ivfpq":
            return
        x = _as_vectors(vectors, self.dim)
        if len(x) < 256:
            raise ValueError(f"ivfpq needs at least 256 training vectors, got {len(x)}")
        kept_ids, kept = self._all()
        self._tombstones.clear()
        inner = self._new_inner("ivfpq", len(x))
        inner.train(x)
        self.index = faiss.IndexIDMap2(inner)
        self.effective_kind = "ivfpq"
        if len(kept_ids):
            self.index.add_with_ids(kept, kept_ids)

    # -- contents -------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self._tombstones)

    @property
    def ntotal(self) -> int:
        """Number of searchable vectors."""
        return len(self)

    def __contains__(self, item_id: int) -> bool:
        i = int(item_id)
        return i not in self._tombstones and self._has(i)

    def _has(self, i: int) -> bool:
        try:
            self.index.reconstruct(i)
            return True
        except RuntimeError:
            return False

    def ids(self) -> np.ndarray:
        """All live ids, in insertion order."""
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        if self._tombstones:
            ids = ids[~np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))]
        return ids

    def add(self, ids: Any, vectors: Any) -> None:
        """Add vectors under new ids; an id already present raises ValueError."""
        ids = _as_ids(ids)
        x = _as_vectors(vectors, self.dim)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        if self._tombstones and any(int(i) in self._tombstones for i in ids):
            self.compact()
        existing = ids[np.isin(ids, faiss.vector_to_array(self.index.id_map))] if self.index.ntotal else ids[:0]
        if len(existing):
            raise ValueError(f"id {int(existing[0])} is already in the index")
        if len(ids):
            self.index.add_with_ids(x, ids)

    def remove(self, ids: Any) -> int:
        """Remove ids (unknown ids are ignored); returns how many were removed."""
        ids = _as_ids(ids)
        if not self._hides_removed:
            return int(self.index.remove_ids(ids))
        present = [int(i) for i in ids if int(i) not in self._tombstones and self._has(int(i))]
        self._tombstones.update(present)
        if len(self._tombstones) > 0.1 * max(1, self.index.ntotal):
            self.compact()
        return len(present)

    def compact(self) -> None:
        """Drop removed ids for good: rebuild the HNSW graph, re-add to a refined IVF-PQ (no-op when none)."""
        if not self._tombstones:
            return
        ids, vecs = self._all()
        self._tombstones.clear()
        if self.effective_kind == "ivfpq":
            self.index.reset()  # keeps the trained quantizers
        else:
            self.index = faiss.IndexIDMap2(self._new_inner(self.effective_kind))
        if len(ids):
            self.index.add_with_ids(vecs, ids)

    def _all(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self.ids()
        if not len(ids):
            return ids, np.zeros((0, self.dim), np.float32)
        return ids, np.stack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def reconstruct(self, item_id: int) -> np.ndarray:
        """The stored (normalised) vector of one id; KeyError when absent."""
        i = int(item_id)
        if i in self._tombstones:
            raise KeyError(f"id {i} is not in the index")
        try:
            return np.asarray(self.index.reconstruct(i), dtype=np.float32)
        except RuntimeError:
            raise KeyError(f"id {i} is not in the index") from None

    # -- search -------------------------------------------------------------------------
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids), best first, each (B, k'); k' = min(k, len). Missing hits (-1) are
        dropped: trailing columns empty in every row are cut, and a row with fewer hits than k'
        (possible only for approximate kinds) is padded with id -1, score -inf at its end."""
        if k <= 0:
            raise ValueError(f"k must be positive, not {k}")
        q = _as_vectors(queries, self.dim)
        live = len(self)
        k_eff = min(int(k), live)
        if k_eff == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        fetch = min(k_eff + len(self._tombstones), int(self.index.ntotal))
        inner = faiss.downcast_index(self.index.index)
        if self.effective_kind == "hnsw":
            inner.hnsw.efSearch = max(self.params["ef_search"], fetch)
        elif self.effective_kind == "ivfpq":  # per call, as efSearch: `params` is the one place to tune
            self._set_search_params(inner)
        scores, ids = self.index.search(q, fetch)
        out_s = np.full((len(q), k_eff), -np.inf, np.float32)
        out_i = np.full((len(q), k_eff), -1, np.int64)
        dead = self._tombstones
        width = 0
        for b in range(len(q)):
            keep = ids[b] >= 0
            if dead:
                keep &= ~np.isin(ids[b], np.fromiter(dead, dtype=np.int64))
            s, i = scores[b][keep][:k_eff], ids[b][keep][:k_eff]
            out_s[b, : len(i)], out_i[b, : len(i)] = s, i
            width = max(width, len(i))
        return out_s[:, :width], out_i[:, :width]

    # -- files --------------------------------------------------------------------------
    def save(self, path: str | Path, stamp: dict | None = None) -> Path:
        """Atomically write the index to `path` and its metadata to `path + ".json"`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.compact()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            digest = _sha256(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if stamp is not None:
            self.stamp = dict(stamp)
        meta = {"format": _FORMAT, "kind": self.kind, "effective_kind": self.effective_kind, "dim": self.dim,
                "params": self.params, "ntotal": int(self.index.ntotal), "sha256": digest, "stamp": self.stamp}
        atomic_write_bytes(Path(f"{path}.json"), json.dumps(meta, indent=1).encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ItemIndex":
        """Read an index written by `save`; IndexFileError when missing, corrupt or mismatched."""
        path = Path(path)
        meta_path = Path(f"{path}.json")
        if not path.exists() or not meta_path.exists():
            raise IndexFileError(f"index file {path} or its metadata is missing")
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != _FORMAT or meta.get("sha256") != _sha256(path):
                raise IndexFileError(f"index file {path} does not match its metadata")
            raw = faiss.read_index(str(path))
        except IndexFileError:
            raise
        except (RuntimeError, ValueError, OSError, KeyError) as e:
            raise IndexFileError(f"index file {path} is unreadable: {e}") from None
        # files written before re-ranking existed hold a plain IVF-PQ index
        index = cls(int(meta["dim"]), meta["kind"], **{"refine": "none", **meta["params"]})
        index.index = faiss.downcast_index(raw) if not isinstance(raw, faiss.IndexIDMap2) else raw
        if not isinstance(index.index, faiss.IndexIDMap2) or index.index.ntotal != meta["ntotal"] \
                or index.index.d != index.dim:
            raise IndexFileError(f"index file {path} does not match its metadata")
        index.effective_kind = meta["effective_kind"]
        index.stamp = meta.get("stamp", {})
        return index
