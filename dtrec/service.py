"""`Recommender`: the service that the Gradio app, its HTTP API and the CLI call.

It ties a `DualTower` checkpoint, a catalog with its raw encoder features, the
persistent `ItemStore` (catalog + uploads) and the derived `ItemIndex` together:
`recommend` runs the user tower on a history and searches the index; `add_item`
validates an upload, encodes it with the frozen encoder and the item tower, stores
it and adds it to the index, so it is retrievable by the very next call and after
a restart. Bad user input raises `InputError` with one sentence and stores nothing.

Demo folder layout (written by `write_demo_folder`, read by `Recommender.from_folder`)::

    DIR/model/config.json, DIR/model/model.safetensors     DualTower checkpoint
    DIR/catalog/items.parquet, DIR/catalog/images/*.jpg     catalog (dtrec.data.catalog layout), thumbnails
    DIR/catalog/features/<encoder>.safetensors              raw encoder features (dtrec.features)
    DIR/item_embeddings.safetensors   the item tower's embeddings of the catalog, keyed (metadata "key")
                          by catalog, features and weights: a start with a fresh store reads them
                          instead of running the item tower; a stale file is recomputed and rewritten
    DIR/histories.json    real test users' histories (lists of item ids)
    DIR/results.json      evaluation table {model: {"valid": {...}, "test": {...}, "cold_start": {...}}}
    DIR/README.md, DIR/NOTICE.md   model card and data notice

The store lives in `store_dir` (default `DIR/store`, or a per-folder cache directory
when `DIR` is read-only). On start the store is seeded from the catalog once; a
changed catalog (fingerprint), model weights or encoder is detected and the stored
rows are refreshed while uploads are kept.

Public-Space safeguards: uploads are capped in number (`max_uploads`) and in stored
bytes (`max_upload_total_bytes`); past a cap an upload is refused with one sentence
(or, with `upload_overflow="evict"`, the oldest uploads make room). With
`upload_visibility="session"` an upload is seen only by the session that made it
(`add_item(session=...)`, or calls made inside `session_scope(session)`); uploads
without a session and catalog items are seen by everyone. Under session visibility no
visitor can lock the others out: a session holds at most `max_uploads_per_session`
uploads, a client address (`session_scope(session, client)`) makes at most
`max_uploads_per_client` per `client_window_s`, a session's private uploads expire once
it has been idle for `session_ttl_s`, and when a cap is reached the private uploads of
*other* sessions make room (ended sessions' first, then the oldest of whichever client
holds the most) before anyone is refused; public uploads are never evicted for them.
On start, what the store had to repair (corrupt database, interrupted writes, missing
images, a rebuilt index) is logged and listed in `about()["recovery"]`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import heapq
import io
import json
import logging
import os
import random
import re
import threading
import time
import unicodedata
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dtrec.config import ServeConfig
from dtrec.data.catalog import Catalog, Dataset, Item, item_text
from dtrec.features import Features, cache_path, load_features
from dtrec.fileio import atomic_write_bytes
from dtrec.store import ItemStore, NewItem, StoredItem
from dtrec.textsearch import TitleIndex

# Formats an upload may have. Deliberately short: every decoder is attack surface, and
# some (EPS) would run external programs.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "MPO")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


log = logging.getLogger("dtrec.service")

ITEM_EMBEDDINGS = "item_embeddings.safetensors"  # a demo folder's carried item-tower embeddings

# The caller's session and client address for calls that do not pass them (the app sets both per event).
_SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("dtrec_session", default=None)
_CLIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("dtrec_client", default=None)


class InputError(ValueError):
    """Bad user input; the message is one sentence that can be shown to the user as is."""


class ImageError(InputError):
    """The uploaded file itself was refused (not a readable, safe image of an allowed size)."""


@contextlib.contextmanager
def session_scope(session: str | None, client: str | None = None) -> Iterator[None]:
    """Recommender calls inside this block act for `session` (its private uploads are visible),
    and their uploads count against `client` (a network address) for the per-client rate limit."""
    token = _SESSION.set(session)
    ctoken = _CLIENT.set(client)
    try:
        yield
    finally:
        _CLIENT.reset(ctoken)
        _SESSION.reset(token)


def human_bytes(n: float) -> str:
    """A byte count in human units, base 1024 as the limits are set: 209715200 -> '200 MB'."""
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} bytes"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GB":
            break
    return f"{n:.0f} {unit}" if abs(n) >= 100 else f"{n:.3g} {unit}"


def _human_seconds(s: float) -> str:
    """'10 minutes', '1 hour', '45 seconds'."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if s >= size:
            v = s / size
            return f"{v:g} {unit}" + ("" if v == 1 else "s")
    return f"{s:g} seconds"


@dataclass
class ItemView:
    """What the UI/API shows for one item."""

    id: str
    title: str
    text: str
    image: str | None  # absolute path of the stored image, or None
    meta: dict = field(default_factory=dict)
    is_new: bool = False  # uploaded, never interacted with


@dataclass
class Recommendation:
    """One ranked item with its score and the history item most responsible for it."""

    item: ItemView
    rank: int
    score: float
    reason: str
    reason_id: str | None = None


@dataclass
class Result:
    """Ranked items and the wall time of the call that made them."""

    items: list[Recommendation]
    latency_ms: float


def _zero_gpu(fn: Callable) -> Callable:
    """`spaces.GPU(fn)` on Hugging Face ZeroGPU (SPACES_ZERO_GPU set, `spaces` importable), else `fn`."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return fn
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(fn)


def _user_tower(model: Any, histories: list[list[int]], features: Features) -> np.ndarray:
    """User-tower predictions (B, d) as float32 numpy."""
    return model.user_embeddings(histories, features).float().cpu().numpy()


def _item_tower(model: Any, features: Features) -> np.ndarray:
    """Item-tower embeddings (N, d) as float32 numpy."""
    return model.item_embeddings(features).float().cpu().numpy()


def clean_text(text: str, keep_newlines: bool) -> str:
    """`text` with control and invisible format characters removed, normalised (NFC) and stripped."""
    text = unicodedata.normalize("NFC", str(text))
    if not keep_newlines:
        text = re.sub(r"[\r\n\t]+", " ", text)
    else:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text).strip()


def _state_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the config and every weight (changes when the checkpoint changes)."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(model.config), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _catalog_fingerprint(catalog_fp: str, features: Features) -> str:
    """The store's key for a catalog: its content (`Catalog.fingerprint`) and the features read for it."""
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


def _default_store_dir(demo_dir: Path) -> Path:
    """`DIR/store` when DIR is writable, else a per-folder directory under the user's cache."""
    env = os.environ.get("DTREC_STORE_DIR")
    if env:
        return Path(env)
    if os.access(demo_dir, os.W_OK):
        return demo_dir / "store"
    key = hashlib.sha256(str(demo_dir.resolve()).encode()).hexdigest()[:12]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dtrec" / f"store-{key}"


class Recommender:
    """Recommendations, uploads, text search and similar items over a persistent item store."""

    def __init__(self, config: ServeConfig, *, demo_dir: str | Path | None = None):
        """Load the model, catalog and features, seed/refresh the store, open the index."""
        from dtrec.encoders.base import resolve_device
        from dtrec.model import DualTower

        if not config.model or not config.catalog or not config.store_dir:
            raise ValueError("ServeConfig needs model, catalog and store_dir")
        self.config = config
        self.demo_dir = Path(demo_dir) if demo_dir is not None else None
        self._lock = threading.RLock()
        self._encoder = None
        # the frozen encoder is built and warmed under its own lock: concurrent first calls race lazy
        # imports and a tokenizer's first configuration (the first /search next to the warm-up failed)
        self._encoder_lock = threading.Lock()
        self._encoder_ready = False
        self._client_log: dict[str, list[float]] = {}  # client address -> times of its recent uploads
        self.device = resolve_device(config.device)
        self.model = DualTower.from_pretrained(config.model).to(self.device).eval()
        self.encoder_name = self.model.config.encoder
        self.modalities = tuple(self.model.config.modality_dims)
        self.dims = dict(self.model.config.modality_dims)
        self.d = int(self.model.config.d_model)
        self._user_tower = _zero_gpu(_user_tower)
        self._item_tower = _item_tower
        # encoder + item tower in one GPU call (ZeroGPU grants the GPU per decorated call)
        self._encode_and_embed = _zero_gpu(self._encode_and_embed_impl)
        self._text_scores = _zero_gpu(self._text_scores_impl)

        catalog_dir = Path(config.catalog)
        items_file = catalog_dir / "items.parquet"
        if not items_file.is_file():
            raise FileNotFoundError(f"{items_file} is missing: is {catalog_dir} a catalog folder?")
        self.catalog = Catalog.from_frame(pd.read_parquet(items_file), root=catalog_dir)
        # hashes every image file: computed once, for the feature check and the store's key alike
        catalog_fp = self.catalog.fingerprint()
        catalog_features = load_features(catalog_dir, self.encoder_name, self.catalog, fingerprint=catalog_fp)
        self.model.check_features(catalog_features)
        catalog_features = catalog_features.select(self.dims)  # only what the model reads

        self.upload_visibility = config.upload_visibility
        if self.upload_visibility == "auto":  # a Hugging Face Space is public: keep uploads private there
            self.upload_visibility = "session" if os.environ.get("SPACE_ID") else "public"
        self.store = ItemStore(config.store_dir)
        existed = len(self.store) > 0
        self._sync_store(catalog_features, catalog_fp)
        self.store.check_files(restore=self._catalog_image)
        self._load_state()
        self.index = self.store.open_index(config.index, dim=self.d, **self._index_params())
        self.recovery: list[str] = list(self.store.recovery)
        if self.store.index_report and existed:  # a fresh store always builds its first index
            self.recovery.append(self.store.index_report)
            log.warning("dtrec store: %s", self.store.index_report)
        self._upload_bytes = self.store.upload_bytes()
        self._histories = self._read_json("histories.json", [])
        self._eval_table = self._read_json("results.json", {})

    @classmethod
    def from_folder(cls, path: str | Path, *, store_dir: str | Path | None = None,
                    config: ServeConfig | None = None) -> "Recommender":
        """A Recommender over a demo folder (layout in the module docstring)."""
        path = Path(path)
        if not (path / "model").is_dir() or not (path / "catalog").is_dir():
            raise FileNotFoundError(f"{path} is not a demo folder: it needs model/ and catalog/ "
                                    f"(write one with `dtrec build-demo`)")
        base = config or ServeConfig()
        store = store_dir or base.store_dir or _default_store_dir(path)
        cfg = dataclasses.replace(base, model=str(path / "model"), catalog=str(path / "catalog"), store_dir=str(store))
        return cls(cfg, demo_dir=path)

    # ------------------------------------------------------------------ start-up
    def _index_params(self) -> dict:
        return self.config.index_spec.params()

    def _read_json(self, name: str, default: Any) -> Any:
        if self.demo_dir is None or not (self.demo_dir / name).is_file():
            return default
        try:
            return json.loads((self.demo_dir / name).read_text())
        except json.JSONDecodeError as e:
            warnings.warn(f"ignoring {self.demo_dir / name}: {e}", stacklevel=3)
            return default

    def _sync_store(self, features: Features, catalog_fingerprint: str) -> None:
        """Seed the store from the catalog once; refresh it when catalog, encoder or weights changed."""
        store = self.store
        catalog_fp = _catalog_fingerprint(catalog_fingerprint, features)
        model_fp = _state_fingerprint(self.model)
        old_encoder = store.get_meta("encoder")
        fresh_catalog = False
        if store.get_meta("catalog_fingerprint") != catalog_fp:
            emb = self._catalog_embeddings(features, item_embeddings_key(catalog_fp, model_fp, features))
            new = []
            for i, it in enumerate(self.catalog):
                p = self.catalog.image_path(i)
                data = p.read_bytes() if p is not None and p.is_file() else None
                new.append(NewItem(
                    id=it.id, title=it.title, text=it.text, meta=it.meta, image=data,
                    image_ext=p.suffix.lstrip(".") if p is not None else "jpg",
                    features={m: features.values[m][i].numpy() if bool(features.present[m][i]) else None
                              for m in features.modalities},
                    embedding=emb[i]))
            store.replace_catalog(new, {"catalog_fingerprint": catalog_fp})
            fresh_catalog = True
        if old_encoder is not None and old_encoder != self.encoder_name and store.count(uploads=True):
            self._reencode_uploads()
        if store.get_meta("model_fingerprint") != model_fp or old_encoder != self.encoder_name:
            # embeddings of stored rows come from other weights: recompute them from stored features
            rows, values, present, _ = store.vectors(self.dims, None)
            if not fresh_catalog or store.count(uploads=True):
                keep = slice(None) if not fresh_catalog else rows >= len(self.catalog)
                rows = rows[keep]
                if len(rows):
                    feats = Features(self.encoder_name, {m: torch.from_numpy(values[m][keep]) for m in self.dims},
                                     {m: torch.from_numpy(present[m][keep]) for m in self.dims})
                    store.update_vectors(rows.tolist(), _item_tower(self.model, feats))
            store.set_meta("model_fingerprint", model_fp)
            store.set_meta("encoder", self.encoder_name)

    def _carried_path(self) -> Path | None:
        """Where the demo folder carries its catalog's item embeddings; None when model or catalog is not the
        folder's own (an override's embeddings would only displace the folder's)."""
        if self.demo_dir is None:
            return None
        own = all(Path(p).resolve() == (self.demo_dir / sub).resolve()
                  for p, sub in ((self.config.model, "model"), (self.config.catalog, "catalog")))
        return self.demo_dir / ITEM_EMBEDDINGS if own else None

    def _catalog_embeddings(self, features: Features, key: str) -> np.ndarray:
        """Item-tower embeddings of the catalog: the demo folder's carried copy when it was made under `key`,
        else computed, and carried from now on where the folder is writable."""
        path = self._carried_path()
        emb = load_item_embeddings(path, key) if path is not None else None
        if emb is not None and emb.shape == (len(self.catalog), self.d):
            return emb
        emb = _item_tower(self.model, features)
        if path is not None:
            try:
                save_item_embeddings(path, emb, key)
            except OSError as e:  # a read-only folder (a Hub snapshot): every fresh store computes them
                log.info("dtrec: could not write %s (%s)", path, e)
        return emb

    def _reencode_uploads(self) -> None:
        """Uploads carry features of another encoder: encode their stored text and image again."""
        ups = self.store.uploads_oldest_first()
        rows, feats = [], {m: [] for m in self.dims}
        for it in ups:
            img = None
            if it.image and Path(it.image).is_file():
                with Image.open(it.image) as im:
                    im.load()
                    img = im.convert("RGB")
            vals = self._encode_content(it.title, it.text, img)
            rows.append(it.row)
            for m in self.dims:
                feats[m].append(vals[m])
        dims = self.dims
        self.store.update_vectors(rows, None, {
            m: None if all(v is None for v in feats[m]) else
            np.stack([v if v is not None else np.zeros(dims[m], np.float32) for v in feats[m]]) for m in dims})

    def _load_state(self) -> None:
        """In-memory copies of what the towers and the UI need, indexed by store row."""
        rows, values, present, emb = self.store.vectors(self.dims, self.d)
        n = int(rows.max()) + 1 if len(rows) else 0
        vals = {m: torch.zeros(n, self.dims[m]) for m in self.dims}
        pres = {m: torch.zeros(n, dtype=torch.bool) for m in self.dims}
        ridx = torch.from_numpy(rows)
        for m in self.dims:
            vals[m][ridx] = torch.from_numpy(values[m])
            pres[m][ridx] = torch.from_numpy(present[m])
        self._features = Features(self.encoder_name, vals, pres).to(self.device)
        self._emb = np.zeros((n, self.d), np.float32)
        self._emb[rows] = emb
        self._views: dict[int, ItemView] = {}
        self._row_of: dict[str, int] = {}
        self._session_of: dict[int, str] = {}  # upload row -> the session that made it
        self._per_session: dict[str, int] = {}  # session -> number of its uploads
        self._last_seen: dict[str, float] = {}  # session with uploads -> time of its last call (or upload)
        self._ended: set[str] = set()  # sessions whose browser tab closed: their uploads are evicted first
        self._owner_of: dict[int, str] = {}  # private upload row -> who made it (client address, else session)
        self._size_of: dict[int, int] = {}  # upload row -> its stored bytes (image file + title + text)
        self._titles: TitleIndex | None = None  # built on first search or warm-up, then kept up to date
        for it in self.store.items():
            self._put_view(it)

    def _catalog_image(self, it: StoredItem) -> bytes | None:
        """The catalog folder's copy of a catalog item's image (to restore a lost store copy)."""
        if it.is_upload or not self.catalog.has(it.id):
            return None
        p = self.catalog.image_path(self.catalog.index_of(it.id))
        return p.read_bytes() if p is not None and p.is_file() else None

    def _put_view(self, it: StoredItem, client: str | None = None) -> None:
        image = it.image if it.image and os.path.isfile(it.image) else None  # lost file: served without image
        self._views[it.row] = ItemView(it.id, it.title, it.text, image, dict(it.meta), it.is_upload)
        self._row_of[it.id] = it.row
        if self._titles is not None:
            self._titles.add(it.row, it.title)
        if it.is_upload:
            self._size_of[it.row] = (os.path.getsize(image) if image else 0) + len(it.title.encode()) \
                + len(it.text.encode())
        if it.is_upload and it.session is not None:
            self._session_of[it.row] = it.session
            self._per_session[it.session] = self._per_session.get(it.session, 0) + 1
            # after a restart a session's last activity is its newest upload; the client is not stored
            self._last_seen[it.session] = max(self._last_seen.get(it.session, 0.0), it.created)
            self._owner_of[it.row] = f"client:{client}" if client else f"session:{it.session}"

    def _drop_view(self, row: int, item_id: str) -> None:
        self._views.pop(row, None)
        self._row_of.pop(item_id, None)
        if self._titles is not None:
            self._titles.remove(row)
        self._size_of.pop(row, None)
        self._owner_of.pop(row, None)
        sess = self._session_of.pop(row, None)
        if sess is not None:
            self._per_session[sess] -= 1
            if not self._per_session[sess]:  # forget sessions that hold nothing (minted ones cost no memory)
                del self._per_session[sess]
                self._last_seen.pop(sess, None)
                self._ended.discard(sess)

    # ------------------------------------------------------------------ helpers
    def _session(self, session: str | None) -> str | None:
        session = session if session is not None else _SESSION.get()
        if session is not None and session in self._last_seen:  # activity keeps private uploads alive
            self._last_seen[session] = time.time()
        return session

    def _visible(self, row: int, session: str | None) -> bool:
        """Whether `session` may see the item at `row` (another session's private upload: no)."""
        if self.upload_visibility == "public":
            return True
        owner = self._session_of.get(row)
        return owner is None or owner == session

    def _n_hidden(self, session: str | None) -> int:
        """How many index entries `session` may not see (searched past, so k results remain)."""
        if self.upload_visibility == "public":
            return 0
        return len(self._session_of) - self._per_session.get(session, 0)

    def _rows(self, item_ids: list[str], session: str | None = None) -> list[int]:
        if isinstance(item_ids, str):
            raise InputError("The history must be a list of item ids.")
        out = []
        for iid in item_ids:
            row = self._row_of.get(str(iid))
            if row is None or not self._visible(row, session):  # another session's upload is not revealed
                raise InputError(f"Unknown item id {str(iid)[:80]!r}.")
            out.append(row)
        return out

    def _check_k(self, k: int) -> int:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise InputError("The number of results must be a whole number.") from None
        if not 1 <= k <= self.config.max_k:
            raise InputError(f"The number of results must be between 1 and {self.config.max_k}.")
        return k

    def _hits(self, scores: np.ndarray, rows: np.ndarray, k: int, skip: set[int],
              session: str | None = None) -> list[tuple[int, float]]:
        out = []
        for s, r in zip(scores.tolist(), rows.tolist()):
            if r < 0 or r in skip or r not in self._views or not self._visible(r, session):
                continue
            out.append((r, float(s)))
            if len(out) == k:
                break
        return out

    def _encoder_obj(self) -> Any:
        """The frozen encoder, built and warmed once, on first use (only uploads and text search need it).

        Callers that arrive while it loads wait for it: the first call of an encoder loads its
        weights lazily (transformers' lazy imports) and configures its tokenizer, neither of which
        is safe to run from two threads at once.
        """
        if self._encoder_ready:
            return self._encoder
        with self._encoder_lock:
            if self._encoder is None:
                from dtrec.encoders import get_encoder

                self._encoder = get_encoder(self.encoder_name, device=self.config.encoder_device or self.device)
            if not self._encoder_ready:
                enc = self._encoder
                if callable(getattr(enc, "load", None)):
                    enc.load(tuple(m for m in ("text", "image") if m in self.dims))
                if "text" in self.dims:
                    enc.encode_text(["warm up"])
                if "image" in self.dims:
                    enc.encode_image([Image.new("RGB", (32, 32), (127, 127, 127))])
                self._encoder_ready = True
        return self._encoder

    def warm_up(self) -> None:
        """Load and warm the frozen encoder and index the titles now, so that the first upload or
        search does not wait for them."""
        self._encoder_obj()
        with self._lock:
            self._title_index()

    def _encode_and_embed_impl(self, title: str, text: str,
                               image: Image.Image | None) -> tuple[dict[str, np.ndarray | None], np.ndarray]:
        """Raw features and item-tower embedding of one item."""
        feats = self._encode_content(title, text, image)
        return feats, self._embed(feats)

    def _text_scores_impl(self, query: str) -> np.ndarray:
        """Cosine between the frozen encoder's embedding of `query` and each store row's text feature
        (-inf for rows without one), by row."""
        from dtrec.encoders.base import torch_threads

        encoder = self._encoder_obj()
        with torch_threads(1):
            q = encoder.encode_text([query])[0].float()
        f = self._features  # one reference: an upload may swap in a grown copy meanwhile
        vals, present = f.values["text"], f.present["text"]
        q = q.to(vals.device)
        cos = (vals @ q) / (vals.norm(dim=1) * q.norm()).clamp_min(1e-12)
        return torch.where(present, cos, float("-inf")).float().cpu().numpy()

    def _title_index(self) -> TitleIndex:
        """The titles of every stored item, indexed on first use (call under the lock)."""
        if self._titles is None:
            titles = TitleIndex()
            for row, view in self._views.items():
                titles.add(row, view.title)
            titles.freeze()
            self._titles = titles
        return self._titles

    def _encode_content(self, title: str, text: str, image: Image.Image | None) -> dict[str, np.ndarray | None]:
        """Raw frozen-encoder features of one item, per model modality (None: absent)."""
        enc = self._encoder_obj()
        out: dict[str, np.ndarray | None] = {m: None for m in self.dims}
        if "text" in self.dims and (title or text):
            out["text"] = enc.encode_text([item_text(title, text)])[0].float().cpu().numpy()
        if "image" in self.dims and image is not None:
            out["image"] = enc.encode_image([image])[0].float().cpu().numpy()
        return out

    def _embed(self, feats: dict[str, np.ndarray | None]) -> np.ndarray:
        """Item-tower embedding (d,) of one item's raw features."""
        values = {m: torch.from_numpy(v if v is not None else np.zeros(self.dims[m], np.float32))[None]
                  for m, v in feats.items()}
        present = {m: torch.tensor([v is not None]) for m, v in feats.items()}
        return self._item_tower(self.model, Features(self.encoder_name, values, present))[0]

    # ------------------------------------------------------------------ the contract
    def recommend(self, history_ids: list[str], k: int = 10, exclude_history: bool = True, *,
                  session: str | None = None) -> Result:
        """Top-k next items for a history (oldest first); reason = most similar history item."""
        t0 = time.perf_counter()
        k = self._check_k(k)
        session = self._session(session)
        if history_ids is None or len(history_ids) == 0:
            raise InputError("Add at least one item to the history.")
        if len(history_ids) > self.config.max_history:
            raise InputError(f"The history is longer than {self.config.max_history} items.")
        with self._lock:
            rows = self._rows(list(history_ids), session)
            tail = rows[-self.model.config.max_len:]
            user = self._user_tower(self.model, [tail], self._features)
            skip = set(rows) if exclude_history else set()
            scores, ids = self.index.search(user, k + len(skip) + self._n_hidden(session))
            hits = self._hits(scores[0], ids[0], k, skip, session)
            hist = np.asarray(sorted(set(rows)), dtype=np.int64)
            recs = []
            if hits:
                sims = self._emb[[r for r, _ in hits]] @ self._emb[hist].T  # (k, h) item-tower cosines
                for j, (r, s) in enumerate(hits):
                    row_sims = sims[j].copy()
                    if len(hist) > 1:
                        row_sims[hist == r] = -np.inf  # explain by another item than itself
                    src = int(hist[int(np.argmax(row_sims))])
                    src_view = self._views[src]
                    recs.append(Recommendation(self._views[r], j + 1, s, f"because you added {src_view.title}",
                                               src_view.id))
        return Result(recs, (time.perf_counter() - t0) * 1000)

    def add_item(self, title: str, text: str = "", image: Image.Image | bytes | str | Path | None = None,
                 *, session: str | None = None, client: str | None = None,
                 require_session: bool = False) -> tuple[str, float]:
        """Validate, encode, store and index a new item; returns (new id, latency_ms).

        Under session visibility an upload without a session is public (an operator's); the app
        passes `require_session`, so that a visitor's request without one is refused instead.
        A private upload counts against its session's quota and its `client`'s rate limit.
        """
        t0 = time.perf_counter()
        if require_session and self.upload_visibility == "session" and self._session(session) is None:
            raise InputError("Uploads on this demo are private to a browser session, and this request has none: "
                             "upload from the page or with gradio_client.")
        title = clean_text(title if title is not None else "", keep_newlines=False)
        text = clean_text(text if text is not None else "", keep_newlines=True)
        if not title:
            raise InputError("Give the item a title.")
        if len(title) > self.config.max_title_chars:
            raise InputError(f"The title is longer than {self.config.max_title_chars} characters.")
        if len(text) > self.config.max_text_chars:
            raise InputError(f"The description is longer than {self.config.max_text_chars} characters.")
        session = self._session(session)
        client = client if client is not None else _CLIENT.get()
        private = self.upload_visibility == "session" and session is not None
        if private:
            self._check_visitor(session, client)
        self._check_caps(0, session)  # before any decoding: a full demo answers at once
        thumb = self._read_image(image) if image is not None else None
        if "text" not in self.dims and thumb is None:
            raise InputError("This model recommends by picture: add an image.")
        jpeg = None
        if thumb is not None:
            buf = io.BytesIO()
            thumb.save(buf, format="JPEG", quality=90)
            jpeg = buf.getvalue()
        size = len(jpeg or b"") + len(title.encode()) + len(text.encode())
        feats, emb = self._encode_and_embed(title, text, thumb)
        with self._lock:
            # again under the lock: concurrent uploads passed the first checks together
            if private:
                self._check_visitor(session, client)
            self._make_room(size, session)
            self._check_caps(size, session)
            while True:
                new_id = f"new-{uuid.uuid4().hex[:8]}"
                if new_id not in self._row_of:
                    break
            stored = self.store.add(NewItem(id=new_id, title=title, text=text, meta={}, image=jpeg,
                                            features=feats, embedding=emb, is_upload=True, session=session))
            self._set_row(stored.row, feats, emb)
            self._put_view(stored, client if private else None)
            self.index.add([stored.row], emb[None])
            self._upload_bytes += size
            self.store.save_index(self.index)
            if private and client is not None:
                self._client_log.setdefault(client, []).append(time.time())
        return new_id, (time.perf_counter() - t0) * 1000

    def _check_visitor(self, session: str, client: str | None) -> None:
        """InputError when `session` holds its quota of uploads or `client` made its quota in the window."""
        c = self.config
        if self._per_session.get(session, 0) >= c.max_uploads_per_session:
            raise InputError(f"This browser session already holds {c.max_uploads_per_session} uploaded items, "
                             "the most one session may keep.")
        if client is None:
            return
        now = time.time()
        with self._lock:
            if len(self._client_log) > 10_000:  # forget idle clients (a flood of addresses costs no memory)
                self._client_log = {k: v for k, v in self._client_log.items() if v and now - v[-1] < c.client_window_s}
            recent = [t for t in self._client_log.get(client, []) if now - t < c.client_window_s]
            if recent:
                self._client_log[client] = recent
            else:
                self._client_log.pop(client, None)
        if len(recent) >= c.max_uploads_per_client:
            raise InputError(f"You have added {c.max_uploads_per_client} items in the last "
                             f"{_human_seconds(c.client_window_s)}, the most allowed; try again later.")

    def _check_caps(self, size: int, session: str | None = None) -> None:
        """InputError when one more upload of `size` bytes would pass `max_uploads` or the byte cap
        even after what `_make_room` may evict for `session`."""
        c = self.config
        if c.upload_overflow == "evict" and size <= c.max_upload_total_bytes:
            return
        n, used = self.store.count(uploads=True), self._upload_bytes
        if self.upload_visibility == "session":  # other sessions' private uploads make room first
            with self._lock:
                others = [r for r, s in self._session_of.items() if s != session]
                n -= len(others)
                used -= sum(self._size_of.get(r, 0) for r in others)
        if n >= c.max_uploads:
            raise InputError(f"This demo already holds its limit of {c.max_uploads} uploaded items, "
                             "so no more can be added.")
        if used + size > c.max_upload_total_bytes:
            raise InputError(f"This demo's storage for uploads ({human_bytes(c.max_upload_total_bytes)}) is full, "
                             "so no more items can be added.")

    def _make_room(self, size: int, session: str | None) -> None:
        """Under the lock, before storing an upload of `size` bytes for `session`: expire idle sessions'
        uploads, evict other sessions' private uploads while a cap is reached, then apply `upload_overflow`."""
        c = self.config
        if self.upload_visibility == "session":
            self._expire_sessions()
            n, used = self.store.count(uploads=True), self._upload_bytes
            drop = []
            if n >= c.max_uploads or used + size > c.max_upload_total_bytes:
                for it in self._eviction_order(exclude=session):
                    if n < c.max_uploads and used + size <= c.max_upload_total_bytes:
                        break
                    drop.append(it)
                    n, used = n - 1, used - self._size_of.get(it.row, 0)
            self._delete_uploads(drop)
        if c.upload_overflow == "evict":
            self._evict_uploads(c.max_uploads - 1, c.max_upload_total_bytes - size)

    def _eviction_order(self, exclude: str | None) -> list[StoredItem]:
        """Other sessions' private uploads in the order they make room: those of ended sessions (oldest
        first), then, one at a time, the oldest upload of whichever client (or session) holds the most."""
        ups = [it for it in self.store.uploads_oldest_first()
               if it.session is not None and it.session != exclude and it.row in self._session_of]
        first = [it for it in ups if it.session in self._ended]
        groups: dict[str, list[StoredItem]] = {}
        for it in ups:
            if it.session not in self._ended:
                groups.setdefault(self._owner_of.get(it.row, f"session:{it.session}"), []).append(it)
        # heap of (-remaining, created of the group's oldest, owner): the biggest holder gives up its oldest
        heap = [(-len(g), g[0].created, owner) for owner, g in groups.items()]
        heapq.heapify(heap)
        pos = dict.fromkeys(groups, 0)
        order = list(first)
        while heap:
            _, _, owner = heapq.heappop(heap)
            g = groups[owner]
            order.append(g[pos[owner]])
            pos[owner] += 1
            if pos[owner] < len(g):
                heapq.heappush(heap, (-(len(g) - pos[owner]), g[pos[owner]].created, owner))
        return order

    def _expire_sessions(self) -> None:
        """Delete the private uploads of sessions idle for longer than `session_ttl_s` (under the lock)."""
        cutoff = time.time() - self.config.session_ttl_s
        idle = {s for s, t in self._last_seen.items() if t < cutoff}
        if idle:
            self._delete_uploads([it for it in self.store.uploads_oldest_first() if it.session in idle])

    def expire_sessions(self) -> int:
        """Delete the private uploads of sessions idle for longer than `session_ttl_s`; returns how many."""
        with self._lock:
            n = self.store.count(uploads=True)
            self._expire_sessions()
            gone = n - self.store.count(uploads=True)
            if gone:
                self.store.save_index(self.index)
        return gone

    def end_session(self, session: str | None = None) -> None:
        """The browser tab of `session` closed: its private uploads are the first to make room."""
        session = session if session is not None else _SESSION.get()
        with self._lock:
            if session is not None and session in self._per_session:
                self._ended.add(session)

    def _set_row(self, row: int, feats: dict[str, np.ndarray | None], emb: np.ndarray) -> None:
        n = self._emb.shape[0]
        if row >= n:
            grow = row + 1 - n
            self._emb = np.concatenate([self._emb, np.zeros((grow, self.d), np.float32)])
            f = self._features
            self._features = Features(self.encoder_name,
                                      {m: torch.cat([f.values[m], f.values[m].new_zeros(grow, self.dims[m])])
                                       for m in self.dims},
                                      {m: torch.cat([f.present[m], f.present[m].new_zeros(grow)]) for m in self.dims})
        self._emb[row] = emb
        for m in self.dims:
            v = feats.get(m)
            self._features.values[m][row] = torch.from_numpy(v).to(self.device) if v is not None else 0.0
            self._features.present[m][row] = v is not None

    def _evict_uploads(self, keep: int, max_bytes: int | None = None) -> None:
        """Delete the oldest uploads until at most `keep` remain and they hold at most `max_bytes`."""
        def size_of(it: StoredItem) -> int:
            img = os.path.getsize(it.image) if it.image and os.path.isfile(it.image) else 0
            return img + len(it.title.encode()) + len(it.text.encode())

        ups = self.store.uploads_oldest_first()
        n_drop = max(len(ups) - max(keep, 0), 0)
        if max_bytes is not None:
            total = self._upload_bytes - sum(size_of(it) for it in ups[:n_drop])
            while n_drop < len(ups) and total > max_bytes:
                total -= size_of(ups[n_drop])
                n_drop += 1
        self._delete_uploads(ups[:n_drop])

    def _delete_uploads(self, drop: list[StoredItem]) -> None:
        """Delete uploads from the store, the index and the in-memory state (under the lock)."""
        if not drop:
            return
        rows = self.store.delete([it.id for it in drop])
        self.index.remove(rows)
        self._upload_bytes = self.store.upload_bytes()
        for it in drop:
            self._drop_view(it.row, it.id)
            self._emb[it.row] = 0.0
            for m in self.dims:
                self._features.present[m][it.row] = False

    def _read_image(self, image: Image.Image | bytes | str | Path) -> Image.Image:
        """A validated RGB thumbnail of an upload; ImageError for anything that is not a safe image."""
        limit = self.config.max_upload_bytes
        if isinstance(image, Image.Image):
            w, h = image.size
            self._check_pixels(w, h)
            try:
                if getattr(image, "is_animated", False):
                    image.seek(0)
                image.load()
                return self._thumbnail(image)
            except ImageError:
                raise
            except Exception:
                raise ImageError("The image could not be read.") from None
        if isinstance(image, (str, Path)):
            p = Path(image)
            try:
                if not p.is_file():
                    raise ImageError("The image file could not be found.")
                if p.stat().st_size > limit:
                    raise ImageError(f"The image is larger than {human_bytes(limit)}.")
                data = p.read_bytes()
            except OSError:
                raise ImageError("The image file could not be read.") from None
        elif isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
        else:
            raise ImageError("The image must be an image file, its bytes or a PIL image.")
        if not data:
            raise ImageError("The image file is empty.")
        if len(data) > limit:
            raise ImageError(f"The image is larger than {human_bytes(limit)}.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                    self._check_pixels(*im.size)  # from the header, before any pixel is decoded
                    im.verify()
                with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                    self._check_pixels(*im.size)
                    im.seek(0)
                    im.load()
                    return self._thumbnail(im)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError("The image has too many pixels.") from None
        except Exception:  # PIL raises many types for malformed files (OSError, SyntaxError, ValueError, ...)
            raise ImageError("The file is not a readable JPEG, PNG, GIF, WebP or BMP image.") from None

    def _check_pixels(self, w: int, h: int) -> None:
        if w <= 0 or h <= 0:
            raise ImageError("The image has no pixels.")
        if w * h > self.config.max_pixels:
            raise ImageError(f"The image has too many pixels (more than {self.config.max_pixels / 1e6:g} megapixels).")

    def _thumbnail(self, im: Image.Image) -> Image.Image:
        from dtrec.encoders.base import to_rgb

        rgb = to_rgb(im)
        if rgb is im:
            rgb = rgb.copy()
        px = self.config.thumbnail_px
        rgb.thumbnail((px, px), Image.Resampling.LANCZOS)
        return rgb

    def search(self, text: str, k: int = 10, *, genre: str | None = None, session: str | None = None) -> Result:
        """Items for a typed title or a description: the UI's search box and `/search` both call this.

        Titles the query names come first (exact, then prefix, word and fuzzy matches; see
        `dtrec.textsearch`), then the other items by meaning: the cosine between the frozen text
        encoder's embedding of the query and of each item's own text (its stored text feature). No
        image and no item tower takes part, so an item is not favoured or hidden for having or lacking
        a picture. `genre` keeps only items whose meta lists it. The score is that text cosine.
        """
        t0 = time.perf_counter()
        k = self._check_k(k)
        session = self._session(session)
        query = clean_text(text if text is not None else "", keep_newlines=False)
        if not query:
            raise InputError("Type something to search for.")
        if len(query) > self.config.max_text_chars:
            raise InputError(f"The query is longer than {self.config.max_text_chars} characters.")
        if genre is not None and not isinstance(genre, str):
            raise InputError("The genre must be a genre's name.")
        # outside the lock: the first call may wait for the encoder to load
        scores = self._text_scores(query) if "text" in self.dims else None
        with self._lock:
            n = self._emb.shape[0]
            allowed = np.zeros(n, dtype=bool)
            allowed[np.fromiter(self._views, dtype=np.int64, count=len(self._views))] = True
            if self.upload_visibility != "public":
                hidden = [r for r, s in self._session_of.items() if s != session]
                allowed[hidden] = False
            if genre:
                allowed[[r for r, v in self._views.items() if genre not in (v.meta.get("genres") or [])]] = False
            titled = [(r, sim) for r, _, sim in self._title_index().match(query) if r < n and allowed[r]][:k]
            if scores is None and not titled:
                raise InputError("No title matches the query, and this model does not read text, "
                                 "so it cannot search by description.")
            if scores is None:
                hits = titled
            else:
                cos = np.full(n, -np.inf, dtype=np.float32)
                cos[:min(n, len(scores))] = scores[:n]  # rows added since the scores were taken: no text yet
                # a titled item with no text feature (or one added since the scoring) has no cosine: 0
                hits = [(r, float(cos[r]) if np.isfinite(cos[r]) else 0.0) for r, _ in titled]
                rest = allowed & np.isfinite(cos)
                rest[[r for r, _ in titled]] = False
                cand, need = np.flatnonzero(rest), k - len(hits)
                if need > 0 and len(cand):
                    if len(cand) > need:  # keep every tie of the last place, so that any k cuts the same order
                        cut = cos[cand[np.argpartition(-cos[cand], need - 1)[:need]]].min()
                        cand = cand[cos[cand] >= cut]
                    cand = cand[np.lexsort((cand, -cos[cand]))][:need]  # best first; equal texts by row
                    hits += [(int(r), float(cos[r])) for r in cand]
            recs = [Recommendation(self._views[r], j + 1, s, "matches your query", None)
                    for j, (r, s) in enumerate(hits)]
        return Result(recs, (time.perf_counter() - t0) * 1000)

    def similar(self, item_id: str, k: int = 10, *, session: str | None = None) -> Result:
        """The k items closest to one item in item-tower space."""
        t0 = time.perf_counter()
        k = self._check_k(k)
        session = self._session(session)
        with self._lock:
            row = self._rows([item_id], session)[0]
            scores, ids = self.index.search(self._emb[row][None], k + 1 + self._n_hidden(session))
            hits = self._hits(scores[0], ids[0], k, {row}, session)
            view = self._views[row]
            recs = [Recommendation(self._views[r], j + 1, s, f"similar to {view.title}", view.id)
                    for j, (r, s) in enumerate(hits)]
        return Result(recs, (time.perf_counter() - t0) * 1000)

    def get(self, item_id: str, *, session: str | None = None) -> ItemView:
        """One item by id."""
        with self._lock:
            return self._views[self._rows([item_id], self._session(session))[0]]

    def list_items(self, query: str = "", genre: str | None = None, limit: int = 200, *,
                   session: str | None = None) -> list[ItemView]:
        """Items whose title contains `query` (case-insensitive) and, when given, of `genre`."""
        q = clean_text(query or "", keep_newlines=False).casefold()
        session = self._session(session)
        out = []
        with self._lock:
            views = [self._views[r] for r in sorted(self._views) if self._visible(r, session)]
        for v in views:
            if q and q not in v.title.casefold():
                continue
            if genre and genre not in (v.meta.get("genres") or []):
                continue
            out.append(v)
            if len(out) >= max(0, int(limit)):
                break
        return out

    def genres(self) -> list[str]:
        """Every genre named in the items' metadata, sorted."""
        with self._lock:
            views = list(self._views.values())
        return sorted({g for v in views for g in (v.meta.get("genres") or []) if isinstance(g, str)})

    def sample_history(self, seed: int | None = None) -> list[str]:
        """A real test user's history from the demo data (its last `max_len` items, all known ids)."""
        with self._lock:
            known = [h for h in ([i for i in hist if i in self._row_of] for hist in self._histories) if h]
        if not known:
            raise InputError("This demo has no stored user histories.")
        hist = random.Random(seed).choice(known)
        return hist[-min(self.model.config.max_len, self.config.max_history):]

    def popular(self, k: int = 10, *, session: str | None = None) -> Result:
        """The k items in the most stored user histories (ties: catalog order), a start before any history.

        The score is the share of histories holding the item; an empty Result when the demo has none.
        """
        t0 = time.perf_counter()
        k = self._check_k(k)
        session = self._session(session)
        n = len(self._histories)
        counts: dict[str, int] = {}
        for hist in self._histories:
            for iid in set(hist):
                counts[iid] = counts.get(iid, 0) + 1
        with self._lock:
            rows = [(c, self._row_of[i]) for i, c in counts.items()
                    if i in self._row_of and self._visible(self._row_of[i], session)]
            top = heapq.nsmallest(k, rows, key=lambda cr: (-cr[0], cr[1]))
            recs = [Recommendation(self._views[r], j + 1, c / n, f"in {c} of {n} sample users' histories", None)
                    for j, (c, r) in enumerate(top)]
        return Result(recs, (time.perf_counter() - t0) * 1000)

    def rank_of(self, item_id: str, history_ids: list[str], *, session: str | None = None) -> int | None:
        """1-based exact rank of an item for a history (history items excluded); None if it is in the history."""
        if not history_ids:
            raise InputError("Add at least one item to the history.")
        if len(history_ids) > self.config.max_history:
            raise InputError(f"The history is longer than {self.config.max_history} items.")
        session = self._session(session)
        with self._lock:
            target = self._rows([item_id], session)[0]
            rows = self._rows(list(history_ids), session)
            if target in rows:
                return None
            user = self._user_tower(self.model, [rows[-self.model.config.max_len:]], self._features)[0]
            live = np.fromiter((r for r in self._views if self._visible(r, session)), dtype=np.int64)
            live = live[~np.isin(live, rows)]
            scores = self._emb[live] @ user
            mine = float(self._emb[target] @ user)
            return int((scores > mine).sum()) + 1

    def about(self) -> dict:
        """Model, encoder, device, weights, counts, index and the evaluation table."""
        weights = Path(self.config.model) / "model.safetensors"
        return {
            "model": self.demo_dir.name if self.demo_dir is not None else self.config.model,
            "encoder": self.encoder_name,
            "device": str(self.device),
            "weights": str(weights.resolve()) if weights.exists() else self.config.model,
            "d_model": self.d,
            "max_len": int(self.model.config.max_len),
            "objective": self.model.config.objective,
            "index": self.index.kind,
            "index_effective": self.index.effective_kind,
            "n_items": len(self.index),
            "n_catalog": self.store.count(uploads=False),
            "n_uploads": self.store.count(uploads=True),
            "max_uploads": self.config.max_uploads,
            "upload_bytes": int(self._upload_bytes),
            "max_upload_total_bytes": self.config.max_upload_total_bytes,
            "upload_visibility": self.upload_visibility,
            "recovery": list(self.recovery),
            "store_dir": str(self.config.store_dir),
            "results": self._eval_table,
        }

    def close(self) -> None:
        """Save the index and close the store."""
        with self._lock:
            self.store.save_index(self.index)
            self.store.close()


# ---------------------------------------------------------------------- demo folder
def write_demo_folder(dataset: Dataset, features: Features, model: Any, out: str | Path,
                      histories: list[list[str]] | None = None, results: dict | str | Path | None = None, *,
                      n_histories: int = 200, readme: str | None = None, notice: str | None = None,
                      thumbnail_px: int = 256, seed: int = 0, half: bool = False) -> Path:
    """Write a demo folder (layout in the module docstring) from a prepared data set, its features and a
    DualTower (or a checkpoint folder). Histories default to `n_histories` test users' histories; `half`
    stores weights and features in fp16 (the loader casts them back to float32)."""
    from tqdm.auto import tqdm

    from dtrec.model import DualTower

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
        from safetensors.torch import load_file, save_file

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
                from dtrec.encoders.base import to_rgb

                with Image.open(p) as im:
                    im.seek(0)
                    im.load()
                    rgb = to_rgb(im)
                rgb.thumbnail((thumbnail_px, thumbnail_px), Image.Resampling.LANCZOS)
                rel = f"images/{i}.jpg"
                rgb.save(cat_dir / rel, format="JPEG", quality=88)
            except Exception as e:  # a broken file costs the item its picture, not the build
                warnings.warn(f"item {it.id!r}: image {p} unreadable, shown without one ({e})", stacklevel=2)
        items.append(Item(it.id, it.title, it.text, rel, dict(it.meta)))
    demo_catalog = Catalog(items, root=cat_dir)
    tmp = cat_dir / "items.parquet.tmp"
    demo_catalog.to_frame().to_parquet(tmp, index=False)
    tmp.replace(cat_dir / "items.parquet")
    # features were extracted from the full-size images; they are kept as they are and bound to this catalog
    name = model.config.encoder
    Features(name, features.values, features.present, demo_catalog.fingerprint()).save(cache_path(cat_dir, name))
    if half:
        _halve_features(cat_dir, name)

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


def _halve_features(catalog_dir: Path, encoder: str) -> None:
    """Rewrite the feature cache with fp16 values (Features.load casts back to float32)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = cache_path(catalog_dir, encoder)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    t = load_file(str(path))
    tmp = path.with_suffix(".half.tmp")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in t.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def write_item_embeddings(folder: str | Path) -> Path:
    """Write a demo folder's carried item embeddings (`ITEM_EMBEDDINGS`), computed from the folder's own
    weights and features exactly as `Recommender` reads them, so that a fresh store can skip the item tower."""
    from dtrec.model import DualTower

    folder = Path(folder)
    model = DualTower.from_pretrained(str(folder / "model")).eval()
    cat_dir = folder / "catalog"
    catalog = Catalog.from_frame(pd.read_parquet(cat_dir / "items.parquet"), root=cat_dir)
    catalog_fp = catalog.fingerprint()
    features = load_features(cat_dir, model.config.encoder, catalog, fingerprint=catalog_fp)
    model.check_features(features)
    features = features.select(dict(model.config.modality_dims))
    key = item_embeddings_key(_catalog_fingerprint(catalog_fp, features), _state_fingerprint(model), features)
    return save_item_embeddings(folder / ITEM_EMBEDDINGS, _item_tower(model, features), key)


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
