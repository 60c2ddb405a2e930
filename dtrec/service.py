"""`Recommender`: the service that the Gradio app, its HTTP API and the CLI call.

It ties a `DualTower` checkpoint, a catalog with its raw encoder features, the
persistent `ItemStore` (catalog + uploads) and the derived `ItemIndex` together:
`recommend` runs the user tower on a history and searches the index; `add_item`
validates an upload, encodes it with the frozen encoder and the item tower, stores
it and adds it to the index, so it is retrievable by the very next call and after
a restart. Bad user input raises `InputError` with one sentence and stores nothing.

The Recommender holds what the queries read (the index, and by store row: item views,
item-tower embeddings, raw features, titles) and answers them; each other job is a module
of `dtrec.serving` it delegates to: `sync` (the store seeded and refreshed), `uploads`
(validation), `limits` (caps and eviction), `sessions` (who sees which upload),
`encoding` (the frozen encoder). A demo folder (layout in `dtrec.demo`, which writes it) is
read by `Recommender.from_folder`; a fresh store seeds from the folder's carried item
embeddings when they match its own model and catalog (`sync.ITEM_EMBEDDINGS`). The store lives
in `store_dir` (default: `dtrec.serving.sync.default_store_dir`, outside the folder served).
On start, what the store had to repair
(corrupt database, interrupted writes, missing images, a rebuilt index) is logged and listed
in `about()["recovery"]`.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import os
import random
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dtrec.config import ServeConfig
from dtrec.data.catalog import Catalog
from dtrec.encoders.base import resolve_device
from dtrec.features import Features, load_features
from dtrec.model import DualTower
from dtrec.serving.encoding import ContentEncoder, user_tower, zero_gpu
from dtrec.serving.errors import ImageError, InputError, human_bytes
from dtrec.serving.limits import UploadLimits, stored_size
from dtrec.serving.sessions import Sessions, current_client, current_session, session_scope
from dtrec.serving.sync import carried_path, catalog_image, default_store_dir, sync_store
from dtrec.serving.uploads import check_item_text, clean_text, jpeg_bytes, read_image
from dtrec.serving.views import ItemView, Recommendation, Result
from dtrec.store import ItemStore, NewItem, StoredItem
from dtrec.textsearch import TitleIndex

# What callers import from here (their homes are in dtrec.serving).
__all__ = ["ImageError", "InputError", "ItemView", "Recommendation", "Recommender", "Result", "human_bytes",
           "session_scope"]

log = logging.getLogger("dtrec.service")


class Recommender:
    """Recommendations, uploads, text search and similar items over a persistent item store."""

    def __init__(self, config: ServeConfig, *, demo_dir: str | Path | None = None):
        """Load the model, catalog and features, seed/refresh the store, open the index."""
        if not config.model or not config.catalog or not config.store_dir:
            raise ValueError("ServeConfig needs model, catalog and store_dir")
        self.config = config
        self.demo_dir = Path(demo_dir) if demo_dir is not None else None
        self._lock = threading.RLock()
        self.device = resolve_device(config.device)
        self.model = DualTower.from_pretrained(config.model).to(self.device).eval()
        self.encoder_name = self.model.config.encoder
        self.modalities = tuple(self.model.config.modality_dims)
        self.dims = dict(self.model.config.modality_dims)
        self.d = int(self.model.config.d_model)
        self.encoder = ContentEncoder(self.model, self.device, config.encoder_device)
        self._user_tower = zero_gpu(user_tower)
        # encoder + item tower in one GPU call (ZeroGPU grants the GPU per decorated call)
        self._encode_and_embed = zero_gpu(self.encoder.encode_and_embed)
        self._text_scores = zero_gpu(self._text_scores_impl)

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
        self.sessions = Sessions(self.upload_visibility)
        self.store = ItemStore(config.store_dir)
        existed = len(self.store) > 0
        sync_store(self.store, self.catalog, catalog_features, self.model, self.encoder.encode, catalog_fp=catalog_fp,
                   carried=carried_path(self.demo_dir, config.model, config.catalog))
        self.store.check_files(restore=lambda it: catalog_image(self.catalog, it))
        self.limits = UploadLimits(config, self.store, self.sessions, self._lock)
        self._load_state()
        self.index = self.store.open_index(config.index, dim=self.d, **config.index_spec.params())
        self.recovery: list[str] = list(self.store.recovery)
        if self.store.index_report and existed:  # a fresh store always builds its first index
            self.recovery.append(self.store.index_report)
            log.warning("dtrec store: %s", self.store.index_report)
        self._histories = self._read_json("histories.json", [])
        self._eval_table = self._read_json("results.json", {})

    @classmethod
    def from_folder(cls, path: str | Path, *, store_dir: str | Path | None = None,
                    config: ServeConfig | None = None) -> "Recommender":
        """A Recommender over a demo folder (layout in `dtrec.demo`)."""
        path = Path(path)
        if not (path / "model").is_dir() or not (path / "catalog").is_dir():
            raise FileNotFoundError(f"{path} is not a demo folder: it needs model/ and catalog/ "
                                    f"(write one with `dtrec build-demo`)")
        base = config or ServeConfig()
        store = store_dir or base.store_dir or default_store_dir(path.resolve() / "model", path.resolve() / "catalog")
        cfg = dataclasses.replace(base, model=str(path / "model"), catalog=str(path / "catalog"), store_dir=str(store))
        return cls(cfg, demo_dir=path)

    # ------------------------------------------------------------------ start-up
    def _read_json(self, name: str, default: Any) -> Any:
        if self.demo_dir is None or not (self.demo_dir / name).is_file():
            return default
        try:
            return json.loads((self.demo_dir / name).read_text())
        except json.JSONDecodeError as e:
            warnings.warn(f"ignoring {self.demo_dir / name}: {e}", stacklevel=3)
            return default

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
        self._content: torch.Tensor | None = None  # the content term's vectors of `_features`, made on first use
        self._emb = np.zeros((n, self.d), np.float32)
        self._emb[rows] = emb
        self._views: dict[int, ItemView] = {}
        self._row_of: dict[str, int] = {}
        self._titles: TitleIndex | None = None  # built on first search or warm-up, then kept up to date
        for it in self.store.items():
            self._put_view(it)

    def _put_view(self, it: StoredItem, client: str | None = None) -> None:
        image = it.image if it.image and os.path.isfile(it.image) else None  # lost file: served without image
        self._views[it.row] = ItemView(it.id, it.title, it.text, image, dict(it.meta), it.is_upload)
        self._row_of[it.id] = it.row
        if self._titles is not None:
            self._titles.add(it.row, it.title)
        if it.is_upload:
            self.limits.size_of[it.row] = stored_size(it)
        if it.is_upload and it.session is not None:
            self.sessions.add(it.row, it.session, it.created, client)

    def _drop_view(self, row: int, item_id: str) -> None:
        self._views.pop(row, None)
        self._row_of.pop(item_id, None)
        if self._titles is not None:
            self._titles.remove(row)
        self.limits.size_of.pop(row, None)
        self.sessions.drop(row)

    # ------------------------------------------------------------------ helpers
    def _rows(self, item_ids: list[str], session: str | None = None) -> list[int]:
        if isinstance(item_ids, str):
            raise InputError("The history must be a list of item ids.")
        out = []
        for iid in item_ids:
            row = self._row_of.get(str(iid))
            if row is None or not self.sessions.visible(row, session):  # another session's upload is not revealed
                raise InputError(f"Unknown item id {str(iid)[:80]!r}.")
            out.append(row)
        return out

    def _check_k(self, k: Any) -> int:
        # the one rule for a result count: the UI and the API pass theirs on as given (a number or its text)
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise InputError(f"k must be a whole number between 1 and {self.config.max_k}.") from None
        if not 1 <= k <= self.config.max_k:
            raise InputError(f"k must be between 1 and {self.config.max_k}, not {k}.")
        return k

    def _hits(self, scores: np.ndarray, rows: np.ndarray, k: int, skip: set[int],
              session: str | None = None) -> list[tuple[int, float]]:
        out = []
        for s, r in zip(scores.tolist(), rows.tolist()):
            if r < 0 or r in skip or r not in self._views or not self.sessions.visible(r, session):
                continue
            out.append((r, float(s)))
            if len(out) == k:
                break
        return out

    def _with_history(self, hits: list[tuple[int, float]], history: list[int], user: np.ndarray,
                      offsets: Any, k: int, session: str | None) -> list[tuple[int, float]]:
        """The top k of `hits` (no history item among them) and the `history` rows scored with the repeat term."""
        extra = [(r, float(self._emb[r] @ user) + float(offsets[r])) for r in history
                 if r in self._views and self.sessions.visible(r, session)]
        return sorted(hits + extra, key=lambda h: -h[1])[:k]

    def _content_offsets(self, rows: list[int]) -> np.ndarray | None:
        """The model's content-term offsets (N,) of every store row for a history, or None without one."""
        if self.model.content_bias is None:
            return None
        if self._content is None:  # every query reads them: made once per change of the store's rows
            self._content = self.model.content_vectors(self._features)
        return self.model.content_offsets([rows], self._features, self._content)[0].float().cpu().numpy()

    def warm_up(self) -> None:
        """Load and warm the frozen encoder and index the titles now, so that the first upload or
        search does not wait for them."""
        self.encoder.get()
        with self._lock:
            self._title_index()

    def _text_scores_impl(self, query: str) -> np.ndarray:
        """The query's text cosine with each store row (see `ContentEncoder.text_scores`), by row."""
        return self.encoder.text_scores(query, self._features)  # one reference: an upload may swap in a copy

    def _title_index(self) -> TitleIndex:
        """The titles of every stored item, indexed on first use (call under the lock)."""
        if self._titles is None:
            titles = TitleIndex()
            for row, view in self._views.items():
                titles.add(row, view.title)
            titles.freeze()
            self._titles = titles
        return self._titles

    # ------------------------------------------------------------------ the contract
    def recommend(self, history_ids: list[str], k: int = 10, exclude_history: bool = True, *,
                  session: str | None = None) -> Result:
        """Top-k next items for a history (oldest first); reason = most similar history item."""
        t0 = time.perf_counter()
        k = self._check_k(k)
        session = self.sessions.resolve(session)
        if history_ids is None or len(history_ids) == 0:
            raise InputError("Add at least one item to the history.")
        if len(history_ids) > self.config.max_history:
            raise InputError(f"The history is longer than {self.config.max_history} items.")
        with self._lock:
            rows = self._rows(list(history_ids), session)
            tail = rows[-self.model.config.max_len:]
            user = self._user_tower(self.model, [tail], self._features)
            offsets = None if exclude_history else self.model.history_offsets([rows], len(self._emb))
            skip = set(rows) if exclude_history or offsets is not None else set()
            content = self._content_offsets(rows)
            if content is not None:
                # The content term is not in the index's vectors: score every row exactly instead (one product
                # per row with the frozen features), the repeat term included.
                exact = self._emb @ user[0] + content
                if offsets is not None:
                    exact = exact + offsets[0].cpu().numpy()
                order = np.argsort(-exact, kind="stable")
                hits = self._hits(exact[order], order, k, set(rows) if exclude_history else set(), session)
            else:
                scores, ids = self.index.search(user, k + len(skip) + self.sessions.n_hidden(session))
                hits = self._hits(scores[0], ids[0], k, skip, session)
                if offsets is not None:  # the repeat term moves history items: score them exactly and merge
                    hits = self._with_history(hits, sorted(set(rows)), user[0], offsets[0], k, session)
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
        if require_session and self.upload_visibility == "session" and self.sessions.resolve(session) is None:
            raise InputError("Uploads on this demo are private to a browser session, and this request has none: "
                             "upload from the page or with gradio_client.")
        title, text = check_item_text(title, text, self.config)
        session = self.sessions.resolve(session)
        client = client if client is not None else current_client()
        private = self.upload_visibility == "session" and session is not None
        if private:
            self.limits.check_visitor(session, client)
        self.limits.check_caps(0, session)  # before any decoding: a full demo answers at once
        thumb = read_image(image, self.config) if image is not None else None
        if "text" not in self.dims and thumb is None:
            raise InputError("This model recommends by picture: add an image.")
        jpeg = jpeg_bytes(thumb) if thumb is not None else None
        size = len(jpeg or b"") + len(title.encode()) + len(text.encode())
        feats, emb = self._encode_and_embed(title, text, thumb)
        with self._lock:
            # again under the lock: concurrent uploads passed the first checks together
            if private:
                self.limits.check_visitor(session, client)
            self.limits.make_room(size, session, self._delete_uploads)
            self.limits.check_caps(size, session)
            while True:
                new_id = f"new-{uuid.uuid4().hex[:8]}"
                if new_id not in self._row_of:
                    break
            stored = self.store.add(NewItem(id=new_id, title=title, text=text, meta={}, image=jpeg,
                                            features=feats, embedding=emb, is_upload=True, session=session))
            self._set_row(stored.row, feats, emb)
            self._put_view(stored, client if private else None)
            self.index.add([stored.row], emb[None])
            self.limits.used += size
            self.store.save_index(self.index)
            if private and client is not None:
                self.limits.record(client)
        return new_id, (time.perf_counter() - t0) * 1000

    def expire_sessions(self) -> int:
        """Delete the private uploads of sessions idle for longer than `session_ttl_s`; returns how many."""
        with self._lock:
            n = self.store.count(uploads=True)
            self._delete_uploads(self.limits.expired())
            gone = n - self.store.count(uploads=True)
            if gone:
                self.store.save_index(self.index)
        return gone

    def end_session(self, session: str | None = None) -> None:
        """The browser tab of `session` closed: its private uploads are the first to make room."""
        session = session if session is not None else current_session()
        with self._lock:
            self.sessions.end(session)

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
        self._content = None  # a row changed: the content vectors are made again on the next query

    def _delete_uploads(self, drop: list[StoredItem]) -> None:
        """Delete uploads from the store, the index and the in-memory state (under the lock)."""
        if not drop:
            return
        rows = self.store.delete([it.id for it in drop])
        self.index.remove(rows)
        self.limits.used = self.store.upload_bytes()
        for it in drop:
            self._drop_view(it.row, it.id)
            self._emb[it.row] = 0.0
            for m in self.dims:
                self._features.present[m][it.row] = False

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
        session = self.sessions.resolve(session)
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
            allowed[self.sessions.hidden_rows(session)] = False
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
        session = self.sessions.resolve(session)
        with self._lock:
            row = self._rows([item_id], session)[0]
            scores, ids = self.index.search(self._emb[row][None], k + 1 + self.sessions.n_hidden(session))
            hits = self._hits(scores[0], ids[0], k, {row}, session)
            view = self._views[row]
            recs = [Recommendation(self._views[r], j + 1, s, f"similar to {view.title}", view.id)
                    for j, (r, s) in enumerate(hits)]
        return Result(recs, (time.perf_counter() - t0) * 1000)

    def get(self, item_id: str, *, session: str | None = None) -> ItemView:
        """One item by id."""
        with self._lock:
            return self._views[self._rows([item_id], self.sessions.resolve(session))[0]]

    def list_items(self, query: str = "", genre: str | None = None, limit: int = 200, *,
                   session: str | None = None) -> list[ItemView]:
        """Items whose title contains `query` (case-insensitive) and, when given, of `genre`."""
        q = clean_text(query or "", keep_newlines=False).casefold()
        session = self.sessions.resolve(session)
        out = []
        with self._lock:
            views = [self._views[r] for r in sorted(self._views) if self.sessions.visible(r, session)]
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
        session = self.sessions.resolve(session)
        n = len(self._histories)
        counts: dict[str, int] = {}
        for hist in self._histories:
            for iid in set(hist):
                counts[iid] = counts.get(iid, 0) + 1
        with self._lock:
            rows = [(c, self._row_of[i]) for i, c in counts.items()
                    if i in self._row_of and self.sessions.visible(self._row_of[i], session)]
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
        session = self.sessions.resolve(session)
        with self._lock:
            target = self._rows([item_id], session)[0]
            rows = self._rows(list(history_ids), session)
            if target in rows:
                return None
            user = self._user_tower(self.model, [rows[-self.model.config.max_len:]], self._features)[0]
            live = np.fromiter((r for r in self._views if self.sessions.visible(r, session)), dtype=np.int64)
            live = live[~np.isin(live, rows)]
            content = self._content_offsets(rows)
            if content is None:
                content = np.zeros(len(self._emb), np.float32)
            scores = self._emb[live] @ user + content[live]
            mine = float(self._emb[target] @ user + content[target])
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
            "upload_bytes": int(self.limits.used),
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
