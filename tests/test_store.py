"""ItemStore: atomic inserts, persistence across restarts, the derived index and its rebuilds."""

import io
import sqlite3
import threading

import numpy as np
import pytest
from PIL import Image

from dtrec.store import ItemStore, NewItem, StoreError

D = 8


def _png(color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def _item(i, upload=False, image=None):
    rng = np.random.default_rng(i)  # per item, so an item's vectors do not depend on call order
    return NewItem(id=f"i{i}", title=f"Item {i}", text="t", meta={"genres": ["A"]}, image=image,
                   image_ext="png", features={"text": rng.standard_normal(4).astype(np.float32), "image": None},
                   embedding=rng.standard_normal(D).astype(np.float32), is_upload=upload)


def test_add_get_and_vectors_roundtrip(tmp_path):
    store = ItemStore(tmp_path)
    items = [_item(i) for i in range(3)]
    stored = store.add_many(items)
    assert [s.row for s in stored] == [0, 1, 2]
    upload = _item(9, upload=True, image=_png())
    up = store.add(upload)
    assert up.row == 3 and up.is_upload and up.image is not None
    assert up.image.startswith(str(tmp_path / "images")) and open(up.image, "rb").read() == _png()
    got = store.get("i9")
    assert got.title == "Item 9" and got.meta == {"genres": ["A"]} and got.image == up.image
    rows, vals, present, emb = store.vectors({"text": 4, "image": 5}, D)
    assert rows.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(vals["text"][1], items[1].features["text"])
    assert present["text"].all() and not present["image"].any() and (vals["image"] == 0).all()
    np.testing.assert_array_equal(emb[3], upload.embedding)
    np.testing.assert_array_equal(emb[0], items[0].embedding)
    with pytest.raises(KeyError, match="i77"):
        store.get("i77")


def test_failed_insert_is_atomic(tmp_path):
    store = ItemStore(tmp_path)
    store.add(_item(0))
    n_images = len(list((tmp_path / "images").iterdir()))
    # the second record repeats an id: nothing of the batch, and no new image file, may stay
    with pytest.raises(StoreError, match="i0"):
        store.add_many([_item(1, image=_png((1, 2, 3))), _item(0)])
    assert len(store) == 1 and "i1" not in store
    assert len(list((tmp_path / "images").iterdir())) == n_images
    assert store.get_meta("generation") == "1"


def test_image_names_come_from_content_not_the_client(tmp_path):
    store = ItemStore(tmp_path)
    a = store.add(_item(0, image=_png()))
    b = store.add(_item(1, image=_png()))
    c = store.add(_item(2, image=_png((0, 255, 0))))
    assert a.image == b.image != c.image
    assert "i0" not in a.image and len(list((tmp_path / "images").iterdir())) == 2
    store.delete(["i0"])  # still used by i1
    assert (tmp_path / "images" / a.image.rsplit("/", 1)[1]).exists()
    store.delete(["i1"])
    assert not (tmp_path / "images" / a.image.rsplit("/", 1)[1]).exists()


def test_restart_keeps_uploads_and_rows_are_not_reused(tmp_path):
    store = ItemStore(tmp_path)
    store.add_many([_item(i) for i in range(3)])
    store.add(_item(5, upload=True, image=_png()))
    store.delete(["i5"])
    store.add(_item(6, upload=True))
    store.close()
    again = ItemStore(tmp_path)
    assert len(again) == 4 and again.count(uploads=True) == 1
    assert again.get("i6").row == 4  # row 3 belonged to the deleted upload
    with sqlite3.connect(tmp_path / "items.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_replace_catalog_keeps_uploads_after_the_new_rows(tmp_path):
    store = ItemStore(tmp_path)
    store.replace_catalog([_item(i) for i in range(3)], {"catalog_fingerprint": "a"})
    store.add(_item(50, upload=True))
    store.replace_catalog([_item(i) for i in range(10, 15)], {"catalog_fingerprint": "b"})
    assert [it.id for it in store.items()] == ["i10", "i11", "i12", "i13", "i14", "i50"]
    assert store.get("i50").row == 5 and store.get_meta("catalog_fingerprint") == "b"


def test_concurrent_inserts_from_threads(tmp_path):
    store = ItemStore(tmp_path)
    errors = []

    def work(t):
        try:
            for j in range(10):
                store.add(_item(t * 100 + j, upload=True))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(store) == 40
    assert sorted(it.row for it in store.items()) == list(range(40))


def test_index_is_rebuilt_when_missing_stale_or_corrupt(tmp_path):
    store = ItemStore(tmp_path)
    store.add_many([_item(i) for i in range(20)])
    index = store.open_index("flat")
    path = store.index_path("flat")
    assert path.exists() and len(index) == 20
    emb = store.vectors({}, D)[3]
    assert index.search(emb[7:8], 1)[1][0, 0] == 7
    # stale: the store gained an item the saved index lacks
    store.add(_item(20, upload=True))
    assert len(store.open_index("flat")) == 21
    # deleted file
    path.unlink()
    assert len(store.open_index("flat")) == 21
    # garbage of the right length, then a truncated file
    size = path.stat().st_size
    path.write_bytes(b"\0" * size)
    assert len(store.open_index("flat")) == 21
    path.write_bytes(path.read_bytes()[:100] if path.stat().st_size else b"")
    again = store.open_index("flat")
    assert len(again) == 21 and again.search(emb[3:4], 1)[1][0, 0] == 3
    # an up-to-date file is loaded as it is, not rebuilt
    mtime = path.stat().st_mtime_ns
    store.open_index("flat")
    assert path.stat().st_mtime_ns == mtime


def test_index_from_another_store_is_not_trusted(tmp_path):
    a, b = ItemStore(tmp_path / "a"), ItemStore(tmp_path / "b")
    a.add_many([_item(i) for i in range(5)])
    b.add_many([_item(i) for i in range(5, 10)])
    a.open_index("flat")
    b.open_index("flat")
    b.index_path("flat").write_bytes(a.index_path("flat").read_bytes())
    (tmp_path / "b" / "index-flat.faiss.json").write_bytes((tmp_path / "a" / "index-flat.faiss.json").read_bytes())
    assert b.open_index("flat").stamp["store_id"] == b.store_id()
