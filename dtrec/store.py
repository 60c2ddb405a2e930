"""`ItemStore`: every servable item (catalog and uploads) persisted in SQLite + an image folder.

Layout of a store directory::

    DIR/items.db        SQLite in WAL mode (tables `items` and `meta`)
    DIR/images/         image files named by content hash (`<sha256[:32]>.<ext>`),
                        never by a client's file name
    DIR/index-<kind>.faiss (+ .json)   the FAISS index, derived from `items.db`

Each item row holds its content (title, text, meta JSON, image file name), the raw
encoder features of each modality with a presence flag, and its item-tower
embedding; `row` is the int64 id used by the FAISS index and the row of the item
in the service's feature matrix. Writes are atomic: an image is written to a temp
file, fsynced and renamed into place *before* the transaction that references it
commits, and a row is inserted in one transaction, so a crash leaves at worst an
unreferenced image file, never a row pointing at a missing or partial one.

The index is always derivable: `stamp()` summarises the store's contents (count, max
row, a checksum of the rows and a write generation counter) and `open_index` rebuilds
the index whenever its saved stamp differs, or the file is missing or corrupt.

Recovery on open (`self.recovery` lists what was done, one sentence each): a database
that SQLite reports as corrupt is moved aside (`items.db.corrupt-<time>`) and a fresh
one is started; `check_files()` deletes interrupted temp files, moves image files no
row references into `DIR/orphans/` (never served), and finds rows whose image file is
missing or does not match its content hash (a corrupt file is moved to `orphans/`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from dtrec.fileio import atomic_write_bytes
from dtrec.index import IndexFileError, ItemIndex

log = logging.getLogger("dtrec.store")

MODALITIES = ("text", "image")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    row INTEGER UNIQUE NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL DEFAULT '',
    meta TEXT NOT NULL DEFAULT '{}',
    image TEXT,
    is_upload INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    session TEXT,
    text_feat BLOB,
    text_present INTEGER NOT NULL DEFAULT 0,
    image_feat BLOB,
    image_present INTEGER NOT NULL DEFAULT 0,
    embedding BLOB
);
CREATE INDEX IF NOT EXISTS items_upload ON items(is_upload, created);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = ("id", "row", "title", "text", "meta", "image", "is_upload", "created", "session")


class StoreError(ValueError):
    """The store cannot do what was asked (duplicate id, unknown id, bad record)."""


@dataclass
class StoredItem:
    """One item as stored (content only; features and embedding are read separately)."""

    id: str
    row: int
    title: str
    text: str = ""
    meta: dict = field(default_factory=dict)
    image: str | None = None  # absolute path of the stored image file
    is_upload: bool = False
    created: float = 0.0
    session: str | None = None


@dataclass
class NewItem:
    """What `ItemStore.add` / `add_many` writes for one item."""

    id: str
    title: str
    text: str = ""
    meta: dict = field(default_factory=dict)
    image: bytes | None = None  # encoded image file content (e.g. JPEG)
    image_ext: str = "jpg"
    features: dict[str, np.ndarray | None] = field(default_factory=dict)  # modality -> (D,) or None
    embedding: np.ndarray | None = None  # (d,) item-tower output
    is_upload: bool = False
    session: str | None = None
    row: int | None = None  # None: the next free row


def _blob(x: np.ndarray | None) -> bytes | None:
    if x is None:
        return None
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1)).tobytes()


def _unblob(b: bytes | None, dim: int) -> np.ndarray:
    if b is None:
        return np.zeros(dim, np.float32)
    return np.frombuffer(b, dtype=np.float32, count=dim)


class ItemStore:
    """SQLite + image folder holding every item; safe for threads of one process."""

    def __init__(self, root: str | Path):
        """Open (creating when needed) the store in directory `root`."""
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "items.db"
        self._lock = threading.RLock()
        self.recovery: list[str] = []  # what opening had to repair, one sentence each
        self.index_report: str | None = None  # why `open_index` rebuilt, when it did
        try:
            self._connect()
        except sqlite3.DatabaseError as e:
            # a corrupt database is kept for inspection; the catalog is re-seeded by the service
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for suffix in ("", "-wal", "-shm"):
                f = self.root / f"items.db{suffix}"
                if f.exists():
                    f.replace(self.root / f"items.db{suffix}.corrupt-{stamp}")
            self._report(f"The database {self.db_path} was unreadable ({e}); it was moved to "
                         f"items.db.corrupt-{stamp} and a fresh one started: uploads stored in it are not served.")
            self._connect()
        with self._lock:
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise StoreError(f"store {self.root} has schema version {version}; this dtrec reads {SCHEMA_VERSION}")

    def _connect(self) -> None:
        """Open the database and fail with sqlite3.DatabaseError unless SQLite finds it sound."""
        db = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
        except BaseException:
            db.close()
            raise
        self._db = db

    def _report(self, sentence: str) -> None:
        self.recovery.append(sentence)
        log.warning("dtrec store: %s", sentence)

    def check_files(self, restore: Any = None) -> dict[str, Any]:
        """Clean interrupted writes and find rows whose image file is missing or corrupt.

        `restore(item) -> bytes | None` may supply a missing/corrupt image again (e.g. from the
        catalog folder); it is used only when its content hash matches the stored name. Returns
        {"missing": ids served without image, "restored": ids, "tmp_removed": n, "orphans": n}.
        """
        out: dict[str, Any] = {"missing": [], "restored": [], "tmp_removed": 0, "orphans": 0}
        with self._lock:
            for tmp in [*self.images_dir.glob(".upload-*.tmp"), *self.root.glob(".index-*.tmp")]:
                tmp.unlink(missing_ok=True)
                out["tmp_removed"] += 1
            referenced: dict[str, list[StoredItem]] = {}
            for it in self.items():
                if it.image:
                    referenced.setdefault(Path(it.image).name, []).append(it)
            orphan_dir = self.root / "orphans"
            for f in self.images_dir.iterdir():
                if f.is_file() and f.name not in referenced:
                    orphan_dir.mkdir(exist_ok=True)
                    f.replace(orphan_dir / f.name)
                    out["orphans"] += 1
            for name, users in referenced.items():
                path = self.images_dir / name
                ok = path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest()[:32] == name.split(".")[0]
                if ok:
                    continue
                if path.exists():  # present but not what was written: keep it aside, never serve it
                    orphan_dir.mkdir(exist_ok=True)
                    path.replace(orphan_dir / f"corrupt-{name}")
                data = restore(users[0]) if restore is not None else None
                if data is not None and hashlib.sha256(data).hexdigest()[:32] == name.split(".")[0]:
                    self._write_image(data, name.split(".", 1)[1])
                    out["restored"] += [u.id for u in users]
                else:
                    out["missing"] += [u.id for u in users]
        if out["tmp_removed"]:
            self._report(f"Removed {out['tmp_removed']} temporary file(s) left by interrupted writes.")
        if out["orphans"]:
            self._report(f"Moved {out['orphans']} image file(s) that no item references to {orphan_dir}.")
        if out["restored"]:
            self._report(f"Restored the missing or corrupt image of {len(out['restored'])} item(s) from the catalog.")
        if out["missing"]:
            shown = ", ".join(out["missing"][:10]) + (" ..." if len(out["missing"]) > 10 else "")
            self._report(f"{len(out['missing'])} item(s) lost their image file and are served without one: {shown}.")
        return out

    def upload_bytes(self) -> int:
        """Bytes stored for uploads: their distinct image files plus their title and text (UTF-8)."""
        with self._lock:
            text = self._q("SELECT COALESCE(SUM(LENGTH(CAST(title AS BLOB)) + LENGTH(CAST(text AS BLOB))), 0) "
                           "FROM items WHERE is_upload=1")[0][0]
            names = [r[0] for r in self._q("SELECT DISTINCT image FROM items WHERE is_upload=1 AND image IS NOT NULL")]
        size = 0
        for n in names:
            try:
                size += (self.images_dir / n).stat().st_size
            except OSError:
                pass
        return int(text) + size

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ItemStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Run a read query under the lock (one connection is shared by all threads)."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- meta -------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A value of the key/value `meta` table."""
        rows = self._q("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        """Set a key of the `meta` table (its own transaction)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))

    def _bump_generation(self) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES ('generation', '1') "
                         "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    # -- images -----------------------------------------------------------------------
    def _write_image(self, data: bytes, ext: str, *, durable: bool = True) -> tuple[str, bool]:
        """Write `data` under its content hash (temp file + fsync + rename); (file name, created).

        `durable=False` skips the fsync: the caller makes a batch durable at once before committing."""
        ext = "".join(c for c in ext.lower() if c.isalnum())[:5] or "bin"
        name = f"{hashlib.sha256(data).hexdigest()[:32]}.{ext}"
        path = self.images_dir / name
        if path.exists() and path.stat().st_size == len(data):
            return name, False
        atomic_write_bytes(path, data, tmp_prefix=".upload-", sync_dir=True, fsync=durable)
        return name, True

    def _drop_image_if_unused(self, name: str | None) -> None:
        if not name:
            return
        used = self._q("SELECT 1 FROM items WHERE image=? LIMIT 1", (name,))
        if not used:
            (self.images_dir / name).unlink(missing_ok=True)

    # -- writes -----------------------------------------------------------------------
    def add(self, item: NewItem) -> StoredItem:
        """Insert one item atomically (image file first, then one transaction); returns it."""
        return self.add_many([item])[0]

    def add_many(self, items: Iterable[NewItem]) -> list[StoredItem]:
        """Insert items in one transaction; on any error nothing is inserted."""
        items = list(items)
        with self._lock:
            written: list[str] = []
            try:
                names = []
                for it in items:
                    if it.image is not None:
                        name, created = self._write_image(it.image, it.image_ext)
                        names.append(name)
                        if created:
                            written.append(name)
                    else:
                        names.append(None)
                out = self._insert(items, names)
            except BaseException:
                for name in written:
                    self._drop_image_if_unused(name)
                raise
        return out

    def _insert(self, items: list[NewItem], names: list[str | None],
                before: Any = None, meta: dict[str, str] | None = None) -> list[StoredItem]:
        now = time.time()
        out = []
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            if before is not None:
                before(cur)
            # rows are never reused (an evicted upload's row stays retired), so track the high-water mark
            top = cur.execute("SELECT MAX(row) FROM items").fetchone()[0]
            mark = cur.execute("SELECT value FROM meta WHERE key='next_row'").fetchone()
            next_row = max(-1 if top is None else int(top), int(mark[0]) - 1 if mark else -1) + 1
            for it, name in zip(items, names):
                if not it.id or not isinstance(it.id, str):
                    raise StoreError("an item id must be a non-empty string")
                row = next_row if it.row is None else int(it.row)
                next_row = max(next_row, row + 1)
                feats = {m: it.features.get(m) for m in MODALITIES}
                try:
                    cur.execute(
                        "INSERT INTO items(id, row, title, text, meta, image, is_upload, created, session, "
                        "text_feat, text_present, image_feat, image_present, embedding) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (it.id, row, it.title, it.text or "", json.dumps(it.meta, ensure_ascii=False), name,
                         int(bool(it.is_upload)), now, it.session,
                         _blob(feats["text"]), int(feats["text"] is not None),
                         _blob(feats["image"]), int(feats["image"] is not None), _blob(it.embedding)),
                    )
                except sqlite3.IntegrityError:
                    raise StoreError(f"item id {it.id!r} or row {row} is already in the store") from None
                out.append(StoredItem(it.id, row, it.title, it.text or "", dict(it.meta),
                                      str(self.images_dir / name) if name else None, bool(it.is_upload), now,
                                      it.session))
            top = cur.execute("SELECT MAX(row) FROM items").fetchone()[0]
            cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_row', ?)",
                        (str(max(next_row, -1 if top is None else int(top) + 1)),))
            for k, v in (meta or {}).items():
                cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, str(v)))
            self._bump_generation()
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return out

    def replace_catalog(self, items: list[NewItem], meta: dict[str, str] | None = None) -> list[StoredItem]:
        """In one transaction: drop every catalog item, insert `items` at rows 0..N-1 (in order),
        renumber uploads to follow them, and set `meta` keys. Uploads are kept."""
        items = [NewItem(**{**it.__dict__, "row": j, "is_upload": False}) for j, it in enumerate(items)]
        with self._lock:
            old_images = [r[0] for r in self._q("SELECT DISTINCT image FROM items WHERE is_upload=0 "
                                                "AND image IS NOT NULL")]
            written: list[str] = []
            names: list[str | None] = []
            try:
                for it in items:
                    if it.image is None:
                        names.append(None)
                        continue
                    name, created = self._write_image(it.image, it.image_ext, durable=False)
                    names.append(name)
                    if created:
                        written.append(name)
                if written:
                    # One flush of everything before the rows that name these files commit: a first start
                    # copies ~1,300 posters, and an fsync each took most of it (6 s of a 10 s load).
                    os.sync()

                def before(cur: sqlite3.Cursor) -> None:
                    cur.execute("DELETE FROM items WHERE is_upload=0")
                    ups = [r[0] for r in cur.execute("SELECT id FROM items ORDER BY row").fetchall()]
                    # two passes so that new rows never collide with old ones mid-update
                    cur.execute("UPDATE items SET row = -1 - row")
                    for j, iid in enumerate(ups):
                        cur.execute("UPDATE items SET row=? WHERE id=?", (len(items) + j, iid))
                    cur.execute("DELETE FROM meta WHERE key='next_row'")

                out = self._insert(items, names, before=before, meta=meta)
            except BaseException:
                for name in written:
                    self._drop_image_if_unused(name)
                raise
            for name in old_images:
                self._drop_image_if_unused(name)
        return out

    def delete(self, item_ids: Iterable[str]) -> list[int]:
        """Delete items by id (one transaction) and their now-unused images; returns their rows."""
        item_ids = list(item_ids)
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                rows, images = [], []
                for iid in item_ids:
                    r = cur.execute("SELECT row, image FROM items WHERE id=?", (iid,)).fetchone()
                    if r is None:
                        continue
                    rows.append(int(r[0]))
                    images.append(r[1])
                    cur.execute("DELETE FROM items WHERE id=?", (iid,))
                self._bump_generation()
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            for name in images:
                self._drop_image_if_unused(name)
        return rows

    def update_vectors(self, rows: list[int], embeddings: np.ndarray | None = None,
                       features: dict[str, np.ndarray | None] | None = None) -> None:
        """Replace the embeddings (N, d) and/or features {m: (N, D) or None} of rows, in one transaction."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for j, row in enumerate(rows):
                    if embeddings is not None:
                        cur.execute("UPDATE items SET embedding=? WHERE row=?", (_blob(embeddings[j]), int(row)))
                    for m, vals in (features or {}).items():
                        cur.execute(f"UPDATE items SET {m}_feat=?, {m}_present=? WHERE row=?",
                                    (_blob(vals[j]) if vals is not None else None, int(vals is not None), int(row)))
                self._bump_generation()
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    # -- reads ------------------------------------------------------------------------
    def _item(self, r: tuple) -> StoredItem:
        iid, row, title, text, meta, image, is_upload, created, session = r
        return StoredItem(iid, int(row), title, text or "", json.loads(meta) if meta else {},
                          str(self.images_dir / image) if image else None, bool(is_upload), float(created), session)

    def __len__(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM items")[0][0])

    def count(self, uploads: bool | None = None) -> int:
        """Number of items; only uploads (True) or only catalog items (False) when given."""
        if uploads is None:
            return len(self)
        return int(self._q("SELECT COUNT(*) FROM items WHERE is_upload=?", (int(uploads),))[0][0])

    def __contains__(self, item_id: str) -> bool:
        return bool(self._q("SELECT 1 FROM items WHERE id=?", (item_id,)))

    def get(self, item_id: str) -> StoredItem:
        """One item by id; KeyError names the id."""
        r = self._q(f"SELECT {', '.join(_COLUMNS)} FROM items WHERE id=?", (item_id,))
        if not r:
            raise KeyError(f"unknown item id {item_id!r}")
        return self._item(r[0])

    def items(self, uploads: bool | None = None) -> Iterator[StoredItem]:
        """All items in row order (optionally only uploads / only catalog items)."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM items"
        args: tuple = ()
        if uploads is not None:
            sql, args = sql + " WHERE is_upload=?", (int(uploads),)
        for r in self._q(sql + " ORDER BY row", args):
            yield self._item(r)

    def uploads_oldest_first(self) -> list[StoredItem]:
        """Uploaded items, oldest first (what `max_uploads` evicts)."""
        rows = self._q(f"SELECT {', '.join(_COLUMNS)} FROM items WHERE is_upload=1 ORDER BY created, row")
        return [self._item(r) for r in rows]

    def max_row(self) -> int:
        """The largest row number, -1 when empty."""
        r = self._q("SELECT MAX(row) FROM items")[0][0]
        return -1 if r is None else int(r)

    def vectors(self, dims: dict[str, int], emb_dim: int | None) -> tuple[np.ndarray, dict, dict, np.ndarray | None]:
        """(rows (N,), features {m: (N, D_m)}, present {m: (N,) bool}, embeddings (N, d) or None), row order."""
        cols = ", ".join(f"{m}_feat, {m}_present" for m in dims)
        sql = f"SELECT row{', ' + cols if cols else ''}, embedding FROM items ORDER BY row"
        res = self._q(sql)
        n = len(res)
        rows = np.fromiter((r[0] for r in res), dtype=np.int64, count=n)
        values = {m: np.zeros((n, d), np.float32) for m, d in dims.items()}
        present = {m: np.zeros(n, bool) for m in dims}
        emb = np.zeros((n, emb_dim), np.float32) if emb_dim else None
        for j, r in enumerate(res):
            for k, m in enumerate(dims):
                blob, flag = r[1 + 2 * k], r[2 + 2 * k]
                if flag and blob is not None:
                    values[m][j] = _unblob(blob, dims[m])
                    present[m][j] = True
            if emb is not None:
                if r[-1] is None:
                    raise StoreError(f"row {int(r[0])} has no embedding")
                emb[j] = _unblob(r[-1], emb_dim)
        return rows, values, present, emb

    # -- the derived index -----------------------------------------------------------
    def stamp(self) -> dict:
        """What the saved index must match: count, max row, checksum of rows, write generation."""
        with self._lock:
            rows = [r[0] for r in self._q("SELECT row FROM items ORDER BY row")]
            gen = self.get_meta("generation", "0")
        h = hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]
        return {"count": len(rows), "max_row": rows[-1] if rows else -1, "rows_sha": h, "generation": int(gen),
                "store_id": self.store_id()}

    def store_id(self) -> str:
        """A random id of this store, fixed at creation (an index from another store never matches)."""
        sid = self.get_meta("store_id")
        if sid is None:
            sid = os.urandom(8).hex()
            with self._lock:
                self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', ?)", (sid,))
            sid = self.get_meta("store_id")
        return sid

    def build_index(self, kind: str = "flat", **params: Any) -> ItemIndex:
        """A fresh index of every stored embedding under its row."""
        with self._lock:
            emb_dim = self._embedding_dim()
            if emb_dim is None:
                if "dim" not in params:
                    raise StoreError("the store holds no embeddings; give the index dimension")
                return ItemIndex(params.pop("dim"), kind, **params)
            params.pop("dim", None)
            rows, _, _, emb = self.vectors({}, emb_dim)
            index = ItemIndex.build(rows, emb, kind, **params)
            index.stamp = self.stamp()
        return index

    def _embedding_dim(self) -> int | None:
        r = self._q("SELECT LENGTH(embedding) FROM items WHERE embedding IS NOT NULL LIMIT 1")
        return None if not r else int(r[0][0]) // 4

    def index_path(self, kind: str) -> Path:
        """Where the index of `kind` is saved."""
        return self.root / f"index-{kind}.faiss"

    def open_index(self, kind: str = "flat", save: bool = True, **params: Any) -> ItemIndex:
        """Load the saved index when its stamp matches the store, else rebuild (and save) it."""
        path = self.index_path(kind)
        with self._lock:
            stamp = self.stamp()
            self.index_report = None
            try:
                index = ItemIndex.load(path)
                wanted = {k: v for k, v in params.items() if k != "dim"}
                if index.stamp == stamp and index.kind == kind and len(index) == stamp["count"] \
                        and all(index.params.get(k) == v for k, v in wanted.items()):
                    return index
                why = f"{path.name} did not match the stored items or settings"
            except IndexFileError as e:
                why = str(e)
            index = self.build_index(kind, **params)
            self.index_report = f"Rebuilt the index from {stamp['count']} stored item(s): {why}."
            if save:
                index.save(path, stamp)
        return index

    def save_index(self, index: ItemIndex) -> Path:
        """Save `index` stamped with the store's current state (call after adding to both)."""
        with self._lock:
            return index.save(self.index_path(index.kind), self.stamp())
