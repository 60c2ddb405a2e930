"""Recommender end to end on a tiny synthetic demo folder (untrained DualTower, tiny-clip encoder)."""

import contextlib
import io
import json
import shutil
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dtrec.config import ModelConfig, ServeConfig
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.features import Features
from dtrec.model import DualTower
from dtrec.service import InputError, Recommender, write_demo_folder

N_ITEMS = 40
DIMS = {"text": 32, "image": 32}  # the tiny-clip encoder's dims
GENRES = ["Comedy", "Drama", "Horror"]


def _png(w=6, h=4, color=(200, 10, 10), mode="RGB", fmt="PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format=fmt, **save)
    return buf.getvalue()


def _model(seed: int) -> DualTower:
    torch.manual_seed(seed)
    return DualTower(ModelConfig(encoder="tiny-clip", modality_dims=DIMS, d_model=32, n_layers=1, n_heads=2,
                                 d_ff=64, max_len=10)).eval()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo folder written by `write_demo_folder` from a synthetic data set and random tiny-clip features."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(N_ITEMS):
        image = None
        if i % 4:  # every fourth item is text-only
            image = f"images/{i}.png"
            (root / image).write_bytes(_png(8, 8, tuple(int(c) for c in rng.integers(0, 255, 3))))
        items.append(Item(f"m{i}", f"Movie {i} ({1990 + i})", f"A film about thing {i}.", image,
                          {"year": 1990 + i, "genres": [GENRES[i % 3]]}))
    catalog = Catalog(items, root=root)
    seqs = [rng.choice(N_ITEMS, size=int(rng.integers(4, 9)), replace=False).tolist() for _ in range(12)]
    dataset = Dataset(catalog, Interactions([f"u{u}" for u in range(12)], seqs), name="synthetic", root=root)
    g = torch.Generator().manual_seed(1)
    has_image = torch.tensor([bool(it.image) for it in items])
    features = Features("tiny-clip", {m: torch.randn(N_ITEMS, d, generator=g) for m, d in DIMS.items()},
                        {"text": torch.ones(N_ITEMS, dtype=torch.bool), "image": has_image})
    features.values["image"][~has_image] = 0
    out = write_demo_folder(dataset, features, _model(0), tmp_path_factory.mktemp("demo"),
                            results={"dtrec": {"test": {"ndcg@10": 0.1}}})
    return {"dir": out, "dataset": dataset, "features": features}


def _open(demo, store, **cfg) -> Recommender:
    return Recommender.from_folder(demo["dir"], store_dir=store, config=ServeConfig(**cfg) if cfg else None)


def _rows(rec: Recommender) -> int:
    return len(rec.store)


def _images(store) -> int:
    return len(list((store / "images").iterdir()))


def test_demo_folder_layout(demo):
    d = demo["dir"]
    for f in ("model/config.json", "model/model.safetensors", "catalog/items.parquet",
              "catalog/features/tiny-clip.safetensors", "histories.json", "results.json", "README.md", "NOTICE.md"):
        assert (d / f).is_file(), f
    thumbs = list((d / "catalog" / "images").glob("*.jpg"))
    assert len(thumbs) == N_ITEMS - N_ITEMS // 4
    hist = json.loads((d / "histories.json").read_text())
    assert hist and all(isinstance(i, str) for h in hist for i in h)


def test_recommend_matches_brute_force(demo, tmp_path):
    rec = _open(demo, tmp_path)
    history = ["m3", "m7", "m11"]
    res = rec.recommend(history, k=5)
    # reference: the towers run directly on the catalog features
    model, feats = rec.model, demo["features"]
    user = model.user_embeddings([[3, 7, 11]], feats)[0]
    scores = model.item_embeddings(feats) @ user
    scores[[3, 7, 11]] = -np.inf
    expect = [f"m{i}" for i in scores.topk(5).indices.tolist()]
    assert [r.item.id for r in res.items] == expect
    assert [r.rank for r in res.items] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(res.items, res.items[1:]))
    assert all(r.reason_id in history and r.reason.startswith("because you added Movie") for r in res.items)
    assert res.latency_ms > 0
    view = res.items[0].item
    assert view.meta["genres"] and not view.is_new
    assert view.image is None or view.image.startswith(str(tmp_path))
    with_hist = rec.recommend(history, k=N_ITEMS, exclude_history=False)
    assert {"m3", "m7", "m11"} <= {r.item.id for r in with_hist.items}
    # the reason is the history item with the highest item-tower cosine
    emb = model.item_embeddings(feats)
    top = int(res.items[0].item.id[1:])
    best = max([3, 7, 11], key=lambda h: float(emb[top] @ emb[h]))
    assert res.items[0].reason_id == f"m{best}"
    # rank_of agrees with recommend
    assert rec.rank_of(expect[1], history) == 2
    assert rec.rank_of("m3", history) is None


def test_add_item_is_retrievable_now_and_after_restart(demo, tmp_path):
    rec = _open(demo, tmp_path)
    n0 = _rows(rec)
    text_id, ms = rec.add_item("Zebra quantum orchestra")
    assert text_id.startswith("new-") and ms > 0
    img_id, _ = rec.add_item("A red poster", "Red \x07square\x00 art.", image=_png(600, 300))
    assert _rows(rec) == n0 + 2
    # a text query equal to the item's only content gives the same item-tower input: rank 1
    assert rec.search("Zebra quantum orchestra", k=3).items[0].item.id == text_id
    hit = rec.search("Zebra quantum orchestra", k=3).items[0]
    assert hit.item.is_new and hit.reason == "matches your query" and hit.score == pytest.approx(1, abs=1e-4)
    view = rec.get(img_id)
    assert view.text == "Red square art." and view.is_new
    with Image.open(view.image) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= 256 and im.size[0] == 2 * im.size[1]
    assert any(r.item.id == img_id for r in rec.recommend([img_id, "m1"], k=N_ITEMS, exclude_history=False).items)
    assert rec.similar(img_id, k=3).items[0].item.id != img_id
    assert isinstance(rec.rank_of(img_id, ["m1", "m2"]), int)
    assert rec.about()["n_uploads"] == 2
    rec.close()

    again = _open(demo, tmp_path)
    assert _rows(again) == n0 + 2 and again.about()["n_uploads"] == 2
    assert again.search("Zebra quantum orchestra", k=1).items[0].item.id == text_id
    assert again.get(img_id).image == view.image
    np.testing.assert_allclose(again.index.reconstruct(again._row_of[img_id]),
                               rec._emb[rec._row_of[img_id]], atol=1e-5)


def test_restart_rebuilds_a_deleted_or_corrupt_index(demo, tmp_path):
    rec = _open(demo, tmp_path)
    new_id, _ = rec.add_item("Only after restart")
    path = rec.store.index_path("flat")
    rec.store.close()
    path.write_bytes(b"not an index")
    again = _open(demo, tmp_path)
    assert len(again.index) == N_ITEMS + 1
    assert again.search("Only after restart", k=1).items[0].item.id == new_id
    again.store.close()
    path.unlink()
    assert len(_open(demo, tmp_path).index) == N_ITEMS + 1


def _bomb_png(w=100_000, h=100_000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD_UPLOADS = {
    "non-image bytes": dict(title="x", image=b"%PDF-1.4 definitely not a picture"),
    "empty file": dict(title="x", image=b""),
    "truncated png": dict(title="x", image=_png(64, 64, (1, 2, 3))[:60]),
    "decompression bomb": dict(title="x", image=_bomb_png()),
    "over the pixel limit": dict(title="x", image=_png(2000, 1000, 0, mode="1")),
    "over the byte limit": dict(title="x", image=b"\xff\xd8" + b"\0" * 3_000_000),
    "eps is not accepted": dict(title="x", image=b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"),
    "missing file": dict(title="x", image="/nonexistent/picture.png"),
    "empty title": dict(title=""),
    "control-only title": dict(title=" \x00\x07\u200b "),
    "10,000-char title": dict(title="t" * 10_000),
    "long text": dict(title="ok", text="x" * 5000),
    "wrong type": dict(title="ok", image=12345),
}


def test_bad_uploads_raise_and_store_nothing(demo, tmp_path):
    rec = _open(demo, tmp_path, max_pixels=1_000_000, max_upload_bytes=2_000_000)
    n0, img0, idx0 = _rows(rec), _images(tmp_path), len(rec.index)
    for name, kwargs in BAD_UPLOADS.items():
        with pytest.raises(InputError) as e:
            rec.add_item(**kwargs)
        msg = str(e.value)
        assert msg.endswith(".") and "\n" not in msg and len(msg) < 160, (name, msg)
        assert _rows(rec) == n0 and _images(tmp_path) == img0 and len(rec.index) == idx0, name


def test_bad_queries_raise_input_error(demo, tmp_path):
    rec = _open(demo, tmp_path, max_history=5)
    with pytest.raises(InputError, match="Add at least one item to the history."):
        rec.recommend([])
    with pytest.raises(InputError, match="nope-42"):
        rec.recommend(["m1", "nope-42"])
    with pytest.raises(InputError, match="longer than 5"):
        rec.recommend([f"m{i}" for i in range(6)])
    with pytest.raises(InputError, match="between 1 and"):
        rec.recommend(["m1"], k=0)
    with pytest.raises(InputError, match="Unknown"):
        rec.similar("zzz")
    with pytest.raises(InputError, match="Type something"):
        rec.search("  \x00 ")
    with pytest.raises(InputError, match="Unknown"):
        rec.get("zzz")


@pytest.mark.parametrize("make", [
    lambda: _png(300, 200, (10, 20, 30, 40), mode="CMYK", fmt="JPEG"),
    lambda: _png(30, 20, 3, mode="P", transparency=3),
    lambda: _png(30, 20, (100, 50), mode="LA"),
    lambda: _gif(),
    lambda: Image.new("RGBA", (40, 40), (1, 2, 3, 0)),
])
def test_image_modes_are_converted_to_rgb(demo, tmp_path, make):
    rec = _open(demo, tmp_path)
    new_id, _ = rec.add_item("Odd picture", image=make())
    with Image.open(rec.get(new_id).image) as im:
        assert im.mode == "RGB" and max(im.size) <= 256


def _gif() -> bytes:
    frames = [Image.new("P", (20, 20), c) for c in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], loop=0)
    return buf.getvalue()


def test_upload_limit_evicts_the_oldest(demo, tmp_path):
    rec = _open(demo, tmp_path, max_uploads=2, upload_overflow="evict")  # the default refuses (test_reliability)
    ids = [rec.add_item(f"Upload {i}")[0] for i in range(3)]
    assert rec.about()["n_uploads"] == 2 and len(rec.index) == N_ITEMS + 2
    with pytest.raises(InputError):
        rec.get(ids[0])
    assert rec.search("Upload 2", k=1).items[0].item.id == ids[2]


def test_new_weights_refresh_stored_embeddings_and_keep_uploads(demo, tmp_path):
    rec = _open(demo, tmp_path)
    new_id, _ = rec.add_item("Kept across models")
    rec.close()
    other = tmp_path / "demo2"
    shutil.copytree(demo["dir"], other)
    _model(7).save_pretrained(other / "model")
    rec2 = Recommender.from_folder(other, store_dir=tmp_path)
    assert rec2.search("Kept across models", k=1).items[0].item.id == new_id
    fresh = Recommender.from_folder(other, store_dir=tmp_path / "fresh")
    a = rec2.recommend(["m1", "m2"], k=8)
    b = fresh.recommend(["m1", "m2"], k=8)
    assert [r.item.id for r in a.items] == [r.item.id for r in b.items]


def test_browsing_history_samples_and_about(demo, tmp_path):
    rec = _open(demo, tmp_path, index="hnsw")
    assert rec.genres() == GENRES
    drama = rec.list_items(genre="Drama")
    assert drama and all("Drama" in v.meta["genres"] for v in drama)
    assert [v.id for v in rec.list_items("movie 1", limit=3)] == ["m1", "m10", "m11"]
    hist = rec.sample_history(seed=3)
    assert hist == rec.sample_history(seed=3) and 1 <= len(hist) <= rec.model.config.max_len
    assert len(rec.recommend(hist, k=5).items) == 5
    about = rec.about()
    assert about["encoder"] == "tiny-clip" and about["index"] == "hnsw" and about["n_items"] == N_ITEMS
    assert about["results"] == {"dtrec": {"test": {"ndcg@10": 0.1}}} and about["device"] in ("cpu", "cuda")


def test_popular_counts_the_stored_histories(demo, tmp_path):
    """Before any click the demo shows the items in the most sample histories (issue 18, item 8)."""
    rec = _open(demo, tmp_path / "store")
    histories = json.loads((demo["dir"] / "histories.json").read_text())
    counts = {}
    for h in histories:
        for i in set(h):
            counts[i] = counts.get(i, 0) + 1
    expected = sorted(counts, key=lambda i: (-counts[i], int(i[1:])))[:5]
    res = rec.popular(k=5)
    assert [r.item.id for r in res.items] == expected
    assert [r.rank for r in res.items] == [1, 2, 3, 4, 5]
    assert [r.score for r in res.items] == [counts[i] / len(histories) for i in expected]
    assert res.items[0].reason == f"in {counts[expected[0]]} of {len(histories)} sample users' histories"
    with pytest.raises(InputError):
        rec.popular(k=0)
    rec.close()
    bare = tmp_path / "bare"
    shutil.copytree(demo["dir"], bare)
    (bare / "histories.json").unlink()
    rec = Recommender.from_folder(bare, store_dir=tmp_path / "bare-store")
    assert rec.popular(k=5).items == []
    rec.close()


# --------------------------------------------------------------------------- visitors on a public demo (issue 18)
def test_a_flood_of_uploads_cannot_lock_out_a_new_visitor(demo, tmp_path):
    """Scripted uploads that fill the cap (a new session and address each, so no per-visitor limit
    applies) cannot stop a fresh session from uploading and seeing its item; public ones are kept."""
    cap = 30  # the 1,000-upload flood over HTTP is test_reliability's (slow)
    rec = _open(demo, tmp_path, upload_visibility="session", max_uploads=cap)
    operator, _ = rec.add_item("Operator's public upload")
    for i in range(cap + 5):
        with contextlib.suppress(InputError):  # whether the flood is accepted is not the point
            rec.add_item(f"Flood {i}", session=f"bot-{i}", client=f"10.0.0.{i}")
    assert rec.about()["n_uploads"] == cap
    mine, _ = rec.add_item("My own poster", image=_png(30, 45), session="visitor", client="192.0.2.7")
    assert rec.about()["n_uploads"] == cap
    assert rec.get(mine, session="visitor").title == "My own poster"
    assert mine in {v.id for v in rec.list_items(limit=10**6, session="visitor")}
    assert mine in {r.item.id for r in rec.search("My own poster", k=100, session="visitor").items}
    for i in range(5):  # the flood goes on: its own oldest uploads make room, not the visitor's
        rec.add_item(f"More flood {i}", session=f"bot2-{i}", client=f"10.0.1.{i}")
    assert rec.get(mine, session="visitor").id == mine
    assert rec.get(operator, session="anyone").id == operator  # public uploads are never evicted for visitors
    with pytest.raises(InputError):
        rec.get(mine, session="bot-0")  # and private stays private


def test_one_client_cannot_flood_with_sessions_it_mints(demo, tmp_path):
    rec = _open(demo, tmp_path, upload_visibility="session", max_uploads=8, max_uploads_per_client=3,
                max_uploads_per_session=2)
    for i in range(3):  # a new session per request, one address
        rec.add_item(f"Scripted {i}", session=f"minted-{i}", client="203.0.113.9")
    with pytest.raises(InputError, match="You have added 3 items in the last 10 minutes") as e:
        rec.add_item("Scripted 3", session="minted-3", client="203.0.113.9")
    assert str(e.value).endswith(".") and "\n" not in str(e.value)
    rec.add_item("Another visitor", session="other", client="198.51.100.1")  # others are not affected
    rec.add_item("Again", session="other", client="198.51.100.1")
    with pytest.raises(InputError, match="already holds 2 uploaded items"):
        rec.add_item("Third from one session", session="other", client="198.51.100.2")
    assert rec.about()["n_uploads"] == 5
    # a public (local) demo keeps no per-visitor limits: its visitors see each other's uploads anyway
    public = _open(demo, tmp_path / "public", upload_visibility="public", max_uploads_per_client=1)
    for i in range(3):
        public.add_item(f"Local {i}", session="s", client="127.0.0.1")


def test_the_biggest_holder_gives_up_its_oldest_upload_first(demo, tmp_path):
    rec = _open(demo, tmp_path, upload_visibility="session", max_uploads=4, max_uploads_per_client=100)
    early, _ = rec.add_item("Early visitor", session="early", client="192.0.2.1")
    for i in range(10):  # one address, many sessions: its own uploads make room for its next ones
        rec.add_item(f"Bot {i}", session=f"bot-{i}", client="203.0.113.9")
    assert rec.get(early, session="early").id == early
    kept = {v.id for v in rec.list_items(limit=10**6) if v.is_new}  # no session: public ones only
    assert not kept and rec.about()["n_uploads"] == 4


def test_idle_sessions_expire_and_closed_tabs_make_room_first(demo, tmp_path):
    rec = _open(demo, tmp_path, upload_visibility="session", session_ttl_s=1.0, max_uploads=3)
    gone, _ = rec.add_item("Idle session's upload", session="idle")
    kept, _ = rec.add_item("Active session's upload", session="active")
    time.sleep(1.2)
    rec.list_items(limit=1, session="active")  # any call keeps a session alive
    assert rec.expire_sessions() == 1
    with pytest.raises(InputError):
        rec.get(gone, session="idle")
    assert rec.get(kept, session="active").id == kept

    rec = _open(demo, tmp_path / "tabs", upload_visibility="session", max_uploads=3)
    oldest, _ = rec.add_item("Oldest, tab open", session="a")
    closed, _ = rec.add_item("Tab closed", session="b")
    rec.add_item("Tab open", session="c")
    rec.end_session("b")
    rec.add_item("A new visitor", session="d")
    assert rec.get(oldest, session="a").id == oldest
    with pytest.raises(InputError):
        rec.get(closed, session="b")


class _LazyEncoder:
    """An encoder that loads on its first call, and whose loading is not safe from two threads at once
    (as the offline encoder's: transformers' lazy imports raced, 'cannot import name AutoModel')."""

    def __init__(self, inner):
        self.inner = inner
        self.loaded = False
        self._loading = threading.Lock()

    def _first_use(self):
        if self.loaded:
            return
        if not self._loading.acquire(blocking=False):
            raise ImportError("cannot import name 'AutoModel' from 'transformers'")
        try:
            time.sleep(0.3)
            self.loaded = True
        finally:
            self._loading.release()

    def encode_text(self, texts):
        self._first_use()
        return self.inner.encode_text(texts)

    def encode_image(self, images):
        self._first_use()
        return self.inner.encode_image(images)


def test_requests_racing_the_encoder_warm_up_wait_for_it(demo, tmp_path, monkeypatch):
    """Issue 18, item 14: the first /search next to the background warm-up must not fail."""
    import dtrec.encoders

    real, built = dtrec.encoders.get_encoder, []

    def get_encoder(name, device=None):
        built.append(name)
        return _LazyEncoder(real(name, device=device))

    monkeypatch.setattr(dtrec.encoders, "get_encoder", get_encoder)
    rec = _open(demo, tmp_path)
    start, errors = threading.Barrier(3), []

    def search(q):
        start.wait()
        try:
            assert len(rec.search(q, k=3).items) == 3
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=search, args=(q,)) for q in ("warm up", "space adventure", "comedy")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(built) == 1


def test_human_bytes():
    from dtrec.service import human_bytes

    assert human_bytes(209715200) == "200 MB" and human_bytes(10 * 1024 * 1024) == "10 MB"
    assert human_bytes(0) == "0 bytes" and human_bytes(1536) == "1.5 KB"


# --------------------------------------------------------------------------- search (issue 18, item 6)
@pytest.fixture(scope="module")
def movies(tiny_demo, tmp_path_factory):
    """A Recommender over the MovieLens fixture demo (real titles, tiny-clip features of their text)."""
    rec = Recommender.from_folder(tiny_demo, store_dir=tmp_path_factory.mktemp("search-store"))
    yield rec
    rec.close()


def _titles(res) -> list[str]:
    return [r.item.title for r in res.items]


@pytest.mark.parametrize("query, title", [
    ("toy story", "Toy Story (1995)"),
    ("Toy Story (1995)", "Toy Story (1995)"),
    ("godfather", "The Godfather (1972)"),  # a leading article may be left out
    ("les miserables", "Les Misérables (1995)"),  # accents need not be typed
    ("star tr", "Star Trek: First Contact (1996)"),  # a prefix
    ("jedi", "Return of the Jedi (1983)"),  # a word of the title
])
def test_a_title_query_returns_that_item_first(movies, query, title):
    res = movies.search(query, k=5)
    assert _titles(res)[0] == title
    assert len(res.items) == 5  # the rest of the page is filled by meaning


@pytest.mark.parametrize("query, title", [
    ("toy sotry", "Toy Story (1995)"),
    ("the godfater", "The Godfather (1972)"),
    ("raiders of the lost arc", "Raiders of the Lost Ark (1981)"),
])
def test_a_misspelt_title_finds_the_item(movies, query, title):
    assert _titles(movies.search(query, k=5))[0] == title


def test_search_by_meaning_ranks_as_the_text_encoder_does(movies):
    """A description no title matches is ranked by the frozen encoder's own text geometry: the cosine
    between the query and each item's text, the yardstick of issue 18 (not the item tower)."""
    from dtrec.data.catalog import item_text
    from dtrec.encoders import get_encoder
    from dtrec.textsearch import TitleIndex

    query = "a gangster family saga with betrayal"
    catalog = list(movies.catalog)
    titles = TitleIndex()
    for i, it in enumerate(catalog):
        titles.add(i, it.title)
    assert not titles.match(query)
    enc = get_encoder(movies.encoder_name, device="cpu")
    items = torch.nn.functional.normalize(enc.encode_text([item_text(it.title, it.text) for it in catalog]), dim=-1)
    q = torch.nn.functional.normalize(enc.encode_text([query]), dim=-1)[0]
    cos = (items @ q).numpy()
    expected = [catalog[i].id for i in np.argsort(-cos, kind="stable")[:8]]
    res = movies.search(query, k=8)
    assert [r.item.id for r in res.items] == expected
    assert np.allclose([r.score for r in res.items], np.sort(cos)[::-1][:8], atol=1e-3)  # batched vs alone


def test_an_item_without_a_picture_is_not_favoured_over_the_same_text_with_one(tiny_demo, tmp_path):
    rec = Recommender.from_folder(tiny_demo, store_dir=tmp_path)
    text = "A lighthouse keeper befriends a whale during a long northern winter."
    with_image, _ = rec.add_item("Keeper of the Light (2024)", text, image=_png(40, 60, (10, 90, 160)))
    without, _ = rec.add_item("Keeper of the Light (2024)", text)
    for query in ("a lonely lighthouse keeper and a whale", "keeper of the light"):
        res = rec.search(query, k=len(rec.index))
        rank = {r.item.id: r for r in res.items}
        assert rank[with_image].score == pytest.approx(rank[without].score, abs=1e-6), query
        assert abs(rank[with_image].rank - rank[without].rank) == 1, query
    rec.close()


def test_the_page_and_the_api_give_the_same_order(movies):
    """The UI's search box and /search both call `Recommender.search`: same items, same order."""
    from dtrec.app import ALL_GENRES, build_app

    demo = build_app(movies)
    fns = list(demo.fns.values())
    api = next(f.fn for f in fns if f.api_name == "search")
    ui = next(f.fn for f in fns if getattr(f.fn, "__name__", "") == "on_search")
    for query in ("toy story", "toy sotry", "a space adventure", "jedi"):
        api_ids = [r["id"] for r in api(query, 10)]
        _, ui_ids = ui(query, ALL_GENRES)[:2]
        assert ui_ids[:10] == api_ids, query
    assert api("toy story", 10)[0]["title"] == "Toy Story (1995)"


def test_search_within_a_genre(movies):
    res = movies.search("star trek", k=10, genre="Sci-Fi")
    assert _titles(res)[0] == "Star Trek: First Contact (1996)"
    assert res.items and all("Sci-Fi" in r.item.meta["genres"] for r in res.items)
    comedy = movies.search("toy story", k=5, genre="Comedy")
    assert _titles(comedy)[0] == "Toy Story (1995)" and all("Comedy" in r.item.meta["genres"] for r in comedy.items)
    drama = movies.search("toy story", k=5, genre="Drama")
    assert "Toy Story (1995)" not in _titles(drama) and all("Drama" in r.item.meta["genres"] for r in drama.items)


def test_a_private_upload_is_not_found_by_its_title_from_another_session(tiny_demo, tmp_path):
    """A guard (it held before the title look-up too): an exact title match does not reveal another
    session's private upload, and its owner finds it first."""
    rec = Recommender.from_folder(tiny_demo, store_dir=tmp_path, config=ServeConfig(upload_visibility="session"))
    mine, _ = rec.add_item("Quixotic Lighthouse Sonata (2026)", session="alice")
    assert rec.search("quixotic lighthouse sonata", k=5, session="alice").items[0].item.id == mine
    for session in ("bob", None):
        res = rec.search("quixotic lighthouse sonata", k=len(rec.index), session=session)
        assert mine not in {r.item.id for r in res.items}
        assert len(res.items) == len(rec.index) - 1
    rec.close()


def test_title_index_follows_uploads_and_deletions():
    """Titles added or removed after the look-up copy was built are found, or no longer found, at once."""
    from dtrec.textsearch import TitleIndex, title_keys

    assert title_keys("Cité des enfants perdus, La (City of Lost Children, The) (1995)") == [
        "la cite des enfants perdus", "cite des enfants perdus", "the city of lost children", "city of lost children"]
    titles = TitleIndex()
    titles.add(0, "Toy Story (1995)")
    titles.add(1, "The Godfather (1972)")
    assert [r for r, _, _ in titles.match("toy story")] == [0]  # builds the copy
    titles.add(2, "Toy Soldiers (1991)")
    assert [(r, tier) for r, tier, _ in titles.match("toy s")] == [(0, 1), (2, 1)]
    assert [(r, tier) for r, tier, _ in titles.match("toy soldeirs")] == [(2, 3)]
    titles.remove(0)
    assert titles.match("toy story") == [] and titles.match("toy stroy") == []
    titles.add(1, "Quiet Lake (2020)")  # a row retitled
    assert titles.match("godfather") == [] and [r for r, _, _ in titles.match("quite lake")] == [1]
    # a description is not a typo of a title, although difflib rates the pair 0.8
    titles.add(3, "The Amazing Panda Adventure (1995)")
    assert titles.match("space adventure") == []
