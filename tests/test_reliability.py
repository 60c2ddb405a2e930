"""Hardening of the public demo: abuse limits, per-session uploads, recovery from faults on disk,
hostile input through the app, files served, and (slow) load and SIGKILL tests.

The slow tests run `python app.py` in a subprocess on a free loopback port over the tiny demo
folder and drive it with gradio_client; they print the figures quoted in the README.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import shutil
import signal
import struct
import threading
import time
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from app_server import launch, start_server, stop_server
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]

from dtrec.config import ServeConfig  # noqa: E402
from dtrec.service import InputError, Recommender, session_scope  # noqa: E402


# --------------------------------------------------------------------------- helpers
def png(seed: int, w: int = 24, h: int = 36, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A small image whose pixels depend on `seed` (distinct content, distinct stored file)."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def open_rec(demo: Path, store: Path, **cfg) -> Recommender:
    return Recommender.from_folder(demo, store_dir=store, config=ServeConfig(**cfg))


def assert_consistent(rec: Recommender) -> None:
    """Every stored row is served, indexed, has its embedding, and its image file (when it has one) is whole."""
    for it in rec.store.items():
        assert rec.get(it.id).id == it.id
        assert it.row in rec.index, it.id
        if it.image and rec.get(it.id).image:
            data = Path(it.image).read_bytes()
            assert hashlib.sha256(data).hexdigest()[:32] == Path(it.image).stem, it.id
    assert len(rec.index) == len(rec.store)
    assert not list(rec.store.images_dir.glob(".upload-*.tmp"))


def one_sentence(msg: str) -> None:
    assert msg.endswith(".") and "\n" not in msg and len(msg) < 200 and "Traceback" not in msg, msg


# --------------------------------------------------------------------------- abuse limits
def test_upload_count_cap_refuses_with_a_clear_message(tiny_demo, tmp_path):
    rec = open_rec(tiny_demo, tmp_path, max_uploads=2)
    kept = [rec.add_item(f"Upload {i}", image=png(i))[0] for i in range(2)]
    n, files = len(rec.store), len(list(rec.store.images_dir.iterdir()))
    with pytest.raises(InputError) as e:
        rec.add_item("One too many", image=png(99))
    one_sentence(str(e.value))
    assert "limit of 2 uploaded items" in str(e.value)
    assert len(rec.store) == n and len(list(rec.store.images_dir.iterdir())) == files
    assert [rec.get(i).id for i in kept] == kept  # refusing keeps what was accepted


def test_upload_byte_cap_refuses_and_evict_makes_room(tiny_demo, tmp_path):
    rec = open_rec(tiny_demo, tmp_path / "refuse", max_upload_total_bytes=3000)
    first, _ = rec.add_item("Small text item")
    with pytest.raises(InputError) as e:
        rec.add_item("Big picture", image=png(1, 200, 200))  # ~ 37 KB as a thumbnail JPEG
    one_sentence(str(e.value))
    assert "storage for uploads" in str(e.value) and rec.about()["n_uploads"] == 1
    assert rec.about()["upload_bytes"] == len("Small text item")

    ev = open_rec(tiny_demo, tmp_path / "evict", max_uploads=2, upload_overflow="evict",
                  max_upload_total_bytes=60_000)
    ids = [ev.add_item(f"Text {i}")[0] for i in range(2)]
    third, _ = ev.add_item("Text 2")
    assert ev.about()["n_uploads"] == 2 and third in {v.id for v in ev.list_items(limit=10**6)}
    with pytest.raises(InputError):
        ev.get(ids[0])  # the oldest made room
    big, _ = ev.add_item("Picture", image=png(2, 200, 200))
    assert ev.about()["upload_bytes"] <= 60_000 and ev.get(big).image
    assert_consistent(ev)


def test_session_uploads_are_private_to_their_session(tiny_demo, tmp_path):
    rec = open_rec(tiny_demo, tmp_path, upload_visibility="session")
    mine, _ = rec.add_item("Zebra quantum orchestra", image=png(5), session="alice")
    shared, _ = rec.add_item("Zebra quantum orchestra shared")  # no session: an operator's upload, public
    catalog = [v.id for v in rec.list_items(limit=3)]

    def seen(session):
        out = {r.item.id for r in rec.search("Zebra quantum orchestra", k=100, session=session).items}
        out |= {r.item.id for r in rec.recommend(catalog, k=100, session=session).items}
        out |= {r.item.id for r in rec.similar(catalog[0], k=100, session=session).items}
        return out | {v.id for v in rec.list_items(limit=10**6, session=session)}

    assert mine in seen("alice") and shared in seen("alice")
    assert mine not in seen("bob") and shared in seen("bob") and mine not in seen(None)
    for call in (lambda: rec.get(mine, session="bob"), lambda: rec.recommend([mine], session="bob"),
                 lambda: rec.similar(mine, session="bob"), lambda: rec.rank_of(mine, catalog, session="bob")):
        with pytest.raises(InputError, match="Unknown item id"):
            call()
    assert rec.rank_of(mine, catalog, session="alice") >= 1
    # hidden uploads never cost a session its k results
    for i in range(5):
        rec.add_item(f"Zebra quantum orchestra {i}", session="carol")
    assert len(rec.search("Zebra quantum orchestra", k=len(rec.index) - 6, session="bob").items) == len(rec.index) - 6
    # the app's uploads need a session: without one a visitor's upload would be public
    n = rec.about()["n_uploads"]
    with pytest.raises(InputError, match="browser session"):
        rec.add_item("Anonymous upload", require_session=True)
    assert rec.about()["n_uploads"] == n
    with session_scope("dave"):
        rec.add_item("Dave's upload", require_session=True)
    assert rec.about()["n_uploads"] == n + 1
    with session_scope("alice"):  # what the app does per event
        assert rec.get(mine).id == mine
        assert mine in {r.item.id for r in rec.search("Zebra quantum orchestra", k=3).items}

    public = open_rec(tiny_demo, tmp_path, upload_visibility="public")
    assert public.get(mine, session="bob").id == mine
    public.add_item("A local visitor's upload", require_session=True)  # public visibility: no session needed


def test_visibility_is_session_on_a_space_and_public_locally(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert open_rec(tiny_demo, tmp_path).about()["upload_visibility"] == "public"
    monkeypatch.setenv("SPACE_ID", "someone/dtrec")
    assert open_rec(tiny_demo, tmp_path).about()["upload_visibility"] == "session"
    with pytest.raises(ValueError):
        ServeConfig(upload_visibility="everyone")


# --------------------------------------------------------------------------- faults on disk
def _crash_copy(store: Path, dest: Path) -> Path:
    """What a SIGKILL leaves: the store's files as they are now, connection still open (WAL not checkpointed)."""
    shutil.copytree(store, dest)
    return dest


def test_missing_or_corrupt_index_is_rebuilt_and_reported(tiny_demo, tmp_path):
    rec = open_rec(tiny_demo, tmp_path)
    new_id, _ = rec.add_item("Indexed upload", image=png(1))
    rec.close()
    path = rec.store.index_path("flat")
    path.unlink()
    again = open_rec(tiny_demo, tmp_path)
    assert any("Rebuilt the index" in r and "missing" in r for r in again.about()["recovery"])
    assert new_id in {r.item.id for r in again.search("Indexed upload", k=100).items}
    again.close()
    path.write_bytes(path.read_bytes()[:100])
    third = open_rec(tiny_demo, tmp_path)
    assert any("Rebuilt the index" in r for r in third.about()["recovery"])
    assert_consistent(third)
    third.close()
    assert open_rec(tiny_demo, tmp_path).about()["recovery"] == []  # a clean start reports nothing


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_lost_or_corrupt_wal_leaves_a_consistent_store(tiny_demo, tmp_path, damage):
    store = tmp_path / "store"
    rec = open_rec(tiny_demo, store)
    kept = [rec.add_item(f"Checkpointed {i}", image=png(i))[0] for i in range(2)]
    rec.close()  # closing the last connection checkpoints the WAL into items.db
    rec = open_rec(tiny_demo, store)
    late = [rec.add_item(f"Only in the WAL {i}", image=png(10 + i))[0] for i in range(3)]
    crash = _crash_copy(store, tmp_path / "crash")
    wal = crash / "items.db-wal"
    assert wal.stat().st_size > 0
    if damage == "delete":
        wal.unlink()
    else:
        data = bytearray(wal.read_bytes())
        for j in range(32 + 24 + 100, len(data), 997):  # frame bodies after the header: checksums fail
            data[j] ^= 0xFF
        wal.write_bytes(bytes(data))
    (crash / "items.db-shm").unlink(missing_ok=True)
    after = open_rec(tiny_demo, crash)
    assert_consistent(after)
    assert [after.get(i).id for i in kept] == kept
    lost = [i for i in late if i not in after.store]
    if damage == "delete":
        assert lost == late
    report = " ".join(after.about()["recovery"])
    if lost:  # their images survived the lost transactions: kept aside, never served, and said so
        assert "no item references" in report and len(list((crash / "orphans").iterdir())) >= len(lost)
        assert "Rebuilt the index" in report


def test_corrupt_database_is_moved_aside_and_the_catalog_served(tiny_demo, tmp_path):
    rec = open_rec(tiny_demo, tmp_path)
    rec.add_item("Lost with the database", image=png(3))
    n_catalog = rec.about()["n_catalog"]
    rec.close()
    db = tmp_path / "items.db"
    db.write_bytes(b"garbage" * 4096)
    again = open_rec(tiny_demo, tmp_path)
    report = " ".join(again.about()["recovery"])
    assert "unreadable" in report and "uploads stored in it are not served" in report
    assert list(tmp_path.glob("items.db.corrupt-*"))
    assert again.about()["n_catalog"] == n_catalog and again.about()["n_uploads"] == 0
    assert_consistent(again)
    assert len(again.recommend([v.id for v in again.list_items(limit=2)], k=5).items) == 5


def test_lost_and_corrupt_image_files(tiny_demo, tmp_path):
    rec = open_rec(tiny_demo, tmp_path)
    gone, _ = rec.add_item("Picture deleted", image=png(1))
    bad, _ = rec.add_item("Picture corrupted", image=png(2))
    cat = next(v for v in rec.list_items(limit=100) if v.image)
    rec.close()
    Path(rec.get(gone).image).unlink()
    Path(rec.get(bad).image).write_bytes(b"\xff\xd8 not the stored jpeg")
    Path(cat.image).unlink()
    (rec.store.images_dir / ".upload-abandoned.tmp").write_bytes(b"half a file")
    again = open_rec(tiny_demo, tmp_path)
    report = " ".join(again.about()["recovery"])
    # uploads are served without a picture (kept: their title, text and embedding are intact) ...
    assert again.get(gone).image is None and again.get(bad).image is None
    assert "2 item(s) lost their image file" in report and gone in report and bad in report
    assert gone in {r.item.id for r in again.search("Picture deleted", k=100).items}
    # ... a catalog picture comes back from the catalog folder, and half-written files are removed
    assert again.get(cat.id).image == cat.image and Path(cat.image).is_file()
    assert "Restored" in report and "temporary file" in report
    assert list((tmp_path / "orphans").glob("corrupt-*"))
    assert_consistent(again)


# --------------------------------------------------------------------------- hostile input through the app
gradio_client = pytest.importorskip("gradio_client")
import httpx  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402



SERVE_CONFIG = dict(upload_visibility="session", max_pixels=4_000_000)  # how conftest's served_app opens the app


@pytest.fixture(scope="module")
def served(served_app):
    """(url, recommender, demo, store): the app in this process, uploads private to their session."""
    return served_app.url, served_app.rec, served_app.demo, served_app.store


@pytest.fixture(scope="module")
def client(served):
    return Client(served[0], verbose=False, download_files=False)


def _handler(demo, name: str):
    return next(f.fn for f in demo.fns.values() if f.name == name)


# What Gradio hands a handler as its last argument (gr.Request): the browser session's hash.
BROWSER = types.SimpleNamespace(session_hash="a-browser-session")


def _bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _corrupt(data: bytes) -> bytes:
    b = bytearray(data)
    for j in range(len(b) // 3, len(b) - 20, 7):
        b[j] ^= 0x5A
    return bytes(b)


HOSTILE_FILES = {
    "html renamed .jpg": ("page.jpg", b"<html><script>alert(1)</script></html>"),
    "svg renamed .png": ("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'),
    "elf renamed .jpg": ("program.jpg", b"\x7fELF\x02\x01\x01" + b"\0" * 200),
    "truncated jpeg": ("cut.jpg", png(1, 64, 64, fmt="JPEG")[:300]),
    "corrupted png": ("noise.png", _corrupt(png(2, 64, 64))),
    "decompression bomb": ("bomb.png", _bomb_png()),
    "0x0 png": ("empty.png", _bomb_png(0, 0)),
    "over the pixel cap": ("wide.png", _bomb_png(5000, 1000)),
    "empty file": ("nothing.jpg", b""),
}


def test_hostile_files_through_the_api_are_refused_and_store_nothing(served, client, tmp_path):
    _, rec, _, store = served
    n, files = rec.about()["n_uploads"], len(list((store / "images").iterdir()))
    for case, (name, data) in HOSTILE_FILES.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(AppError, match=".") as e:
            client.predict(image=handle_file(str(path)), title="Hostile", text="", api_name="/add_item")
        one_sentence(str(e.value))
        assert "image" in str(e.value), case
        assert rec.about()["n_uploads"] == n and len(list((store / "images").iterdir())) == files, case
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + os.urandom(6 * 1024 * 1024))  # past the 5 MB upload cap
    with pytest.raises(Exception) as e:  # Gradio (its client, then its server) refuses it before the handler runs
        client.predict(image=handle_file(str(big)), title="Huge", text="", api_name="/add_item")
    assert "maximum file size" in str(e.value) or "large" in str(e.value).lower() or "413" in str(e.value)
    assert rec.about()["n_uploads"] == n


def _gif() -> bytes:
    frames = [Image.new("P", (20, 30), c) for c in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], loop=0)
    return buf.getvalue()


@pytest.mark.parametrize("name, data", [
    ("animated.gif", _gif()),
    ("cmyk.jpg", png(4, 60, 40, fmt="JPEG", mode="CMYK")),
    ("line.png", png(5, 1, 10_000)),
    # entropy-coded garbage after intact headers decodes to noise: stored as our own re-encoded thumbnail
    ("noise.jpg", _corrupt(png(3, 64, 64, fmt="JPEG"))),
])
def test_odd_but_valid_images_are_accepted_as_rgb_thumbnails(served, client, tmp_path, name, data):
    _, rec, _, _ = served
    (tmp_path / name).write_bytes(data)
    out = client.predict(image=handle_file(str(tmp_path / name)), title=f"Odd {name}", text="", api_name="/add_item")
    with Image.open(rec.store.get(out["id"]).image) as im:
        assert im.mode == "RGB" and max(im.size) <= 256 and min(im.size) >= 1


def test_markup_in_titles_is_shown_as_text(served, client):
    _, rec, demo, _ = served
    title = "<script>alert(1)</script><img src=x onerror=alert(2)> **bold** [link](javascript:x)\x00\x07\u202e"
    new_id, status, *_ = _handler(demo, "on_add")(None, title, "<b>text</b>", [], None, BROWSER)
    stored = rec.store.get(new_id).title
    assert "\x00" not in stored and "\x07" not in stored and "\u202e" not in stored and "<script>" in stored
    assert "<script" not in status and "<img" not in status and "**bold**" not in status and "](" not in status
    assert "&lt;script&gt;" in status
    hist = [v.id for v in rec.list_items(limit=2)]
    rank_md = _handler(demo, "on_refresh")(hist, 5, new_id, BROWSER)[3]
    assert "<script" not in rank_md and "&lt;script&gt;" in rank_md
    # an error message that quotes user input is escaped too (gr.Error renders HTML)
    with pytest.raises(AppError) as e:
        client.predict(history=["<img src=x onerror=alert(1)>"], k=5, api_name="/recommend")
    assert "<img" not in str(e.value) and "&lt;img" in str(e.value)


@pytest.mark.parametrize("kwargs, words", [
    (dict(history="x" * 100_000, k=5), "Unknown item id"),
    (dict(history=", ".join(str(i) for i in range(10_000)), k=5), "longer than"),
    (dict(history=["-1"], k=5), "Unknown item id"),
    (dict(history=[-1], k=5), "Unknown item id"),
    (dict(history=["../../etc/passwd"], k=5), "Unknown item id"),
    (dict(history=["1"], k=-3), "between 1 and"),
    (dict(history=["1"], k=10**9), "between 1 and"),
])
def test_hostile_recommend_input_is_one_sentence(served, client, kwargs, words):
    with pytest.raises(AppError) as e:
        client.predict(**kwargs, api_name="/recommend")
    assert words in str(e.value)
    one_sentence(str(e.value))


def test_hostile_strings_are_one_sentence_and_store_nothing(served, client):
    _, rec, demo, _ = served
    n = rec.about()["n_uploads"]
    for kwargs, words in [(dict(image=None, title="t" * 100_000, text=""), "title is longer"),
                          (dict(image=None, title="ok", text="d" * 100_000), "description is longer"),
                          (dict(image=None, title="\x00\x01\u200b", text=""), "title")]:
        with pytest.raises(AppError) as e:
            client.predict(**kwargs, api_name="/add_item")
        assert words in str(e.value)
        one_sentence(str(e.value))
    with pytest.raises(AppError) as e:
        client.predict(text="q" * 100_000, k=5, api_name="/search")
    assert "longer than" in str(e.value)
    # the UI handler refuses a path that is not a client upload, whatever it names: its status line says
    # so in one sentence, the field lets go of the path, and nothing is stored
    out = _handler(demo, "on_add")("../../etc/passwd", "Path", "", [], None, BROWSER)
    status = out[1]
    assert status.startswith("⚠️ **Not added.** ") and "uploaded with this request" in status
    one_sentence(status.removeprefix("⚠️ **Not added.** ").replace("\\", ""))
    assert out[-1] is None  # the Poster field is cleared
    assert rec.about()["n_uploads"] == n


def test_client_file_paths_are_not_trusted(served):
    """A client can name no server file as its upload: only files it uploaded reach the handler."""
    url, rec, _, _ = served
    n = rec.about()["n_uploads"]
    with httpx.Client(base_url=url, timeout=30) as http:
        up = http.post("gradio_api/upload", files={"files": ("../../etc/passwd", b"root:x:0:0", "image/jpeg")})
        assert up.status_code == 200
        stored = up.json()[0]
        assert "/etc/passwd" not in stored and ".." not in Path(stored).parts
        for path in (stored, "/etc/passwd", str(REPO / "app.py")):
            body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "Path", ""]}
            r = http.post("gradio_api/call/add_item", json=body)
            if r.status_code == 200:
                events = http.get(f"gradio_api/call/add_item/{r.json()['event_id']}").text
                assert "event: error" in events and "new-" not in events, (path, events)
    assert rec.about()["n_uploads"] == n


def test_only_the_image_folders_are_served(served, tiny_demo):
    url, rec, _, store = served
    image = next(v.image for v in rec.list_items(limit=50) if v.image)
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get(f"gradio_api/file={image}").status_code == 200  # the allowed folders do serve
        for path in ("/etc/passwd", str(REPO / "app.py"), str(store / "items.db"), str(store / "items.db-wal"),
                     f"{store}/images/../items.db", str(tiny_demo / "model" / "model.safetensors"),
                     str(tiny_demo / "catalog" / "items.parquet"), "../../../../etc/passwd"):
            r = http.get(f"gradio_api/file={path}")
            assert r.status_code in (403, 404), (path, r.status_code)
            assert b"root:" not in r.content and b"import gradio" not in r.content and b"SQLite" not in r.content


def test_uploads_are_private_to_the_uploading_session(served, tmp_path):
    url, rec, _, _ = served
    alice, bob = Client(url, verbose=False, download_files=False), Client(url, verbose=False, download_files=False)
    (tmp_path / "p.png").write_bytes(png(77))
    new = alice.predict(image=handle_file(str(tmp_path / "p.png")), title="Alice's secret reel", text="",
                        api_name="/add_item")["id"]
    assert new in {r["id"] for r in alice.predict(text="Alice's secret reel", k=100, api_name="/search")}
    assert new not in {r["id"] for r in bob.predict(text="Alice's secret reel", k=100, api_name="/search")}
    assert len(alice.predict(history=[new], k=3, api_name="/recommend")) == 3
    with pytest.raises(AppError, match="Unknown item id"):
        bob.predict(history=[new], k=3, api_name="/recommend")


@pytest.mark.parametrize("cap", [20, pytest.param(1000, marks=pytest.mark.slow)])
def test_a_scripted_flood_cannot_stop_a_fresh_browser_session_uploading(tiny_demo, tmp_path, cap):
    """Issue 18, item 1: requests without a session of their own are refused; 1,000+ scripted uploads
    fill the cap, then a fresh browser session still uploads and sees its item; and one address
    minting a session per request is held to its quota."""
    store = tmp_path / "store"
    rec = open_rec(tiny_demo, store, upload_visibility="session", max_uploads=cap, max_uploads_per_client=3)
    url, demo = launch(rec, tiny_demo, store)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(3):  # Gradio would make each request's event id its session
                up = http.post("gradio_api/upload", files={"files": (f"p{i}.png", png(100 + i), "image/png")}).json()[0]
                body = {"data": [{"path": up, "meta": {"_type": "gradio.FileData"}}, "No session", ""]}
                r = http.post("gradio_api/call/add_item", json=body)
                events = http.get(f"gradio_api/call/add_item/{r.json()['event_id']}").text
                assert "event: error" in events and "browser session" in events, events
        assert rec.about()["n_uploads"] == 0
        t0 = time.time()
        for i in range(cap + 10):  # a distributed flood: a new session and address each time
            with contextlib.suppress(InputError):  # whether the flood is accepted is not the point
                rec.add_item(f"Flood {i}", session=f"bot-{i}", client=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        flood_s = time.time() - t0
        assert rec.about()["n_uploads"] == cap
        visitor, other = (Client(url, verbose=False, download_files=False) for _ in range(2))
        (tmp_path / "mine.png").write_bytes(png(7))
        added = visitor.predict(image=handle_file(str(tmp_path / "mine.png")), title="Visitor's own poster", text="",
                                api_name="/add_item")
        assert added["id"] in {r["id"] for r in visitor.predict(text="Visitor's own poster", k=100, api_name="/search")}
        assert len(visitor.predict(history=[added["id"]], k=3, api_name="/recommend")) == 3
        seen_by_other = other.predict(text="Visitor's own poster", k=100, api_name="/search")
        assert added["id"] not in {r["id"] for r in seen_by_other}
        assert rec.about()["n_uploads"] == cap
        for i in range(3):  # this address has one upload; a new client (session) per request gets two more
            (tmp_path / f"s{i}.png").write_bytes(png(300 + i))
            call = lambda: Client(url, verbose=False, download_files=False).predict(  # noqa: E731
                image=handle_file(str(tmp_path / f"s{i}.png")), title=f"Scripted {i}", text="", api_name="/add_item")
            if i < 2:
                call()
            else:
                with pytest.raises(AppError, match="You have added 3 items in the last 10 minutes"):
                    call()
        print(f"\nflood: {cap + 10} scripted uploads in {flood_s:.1f} s filled the cap of {cap}; "
              "a fresh browser session then uploaded and saw its item")
    finally:
        demo.close()
        rec.close()


def test_a_closed_tab_ends_its_session(served):
    """Gradio's unload event (the tab's heartbeat stops) marks the session's uploads as the first to go."""
    url, rec, _, _ = served
    rec.add_item("A closing tab's upload", session="closing-tab")
    with httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("GET", "gradio_api/heartbeat/closing-tab") as r:
            next(r.iter_text())
    deadline = time.time() + 10
    while "closing-tab" not in rec.sessions.ended and time.time() < deadline:
        time.sleep(0.05)
    assert "closing-tab" in rec.sessions.ended


# --------------------------------------------------------------------------- slow: the app in a subprocess
def run_load(url: str, catalog_ids: list[str], work: Path, *, clients: int = 16, seconds: float = 60.0,
             seed: int = 0) -> dict:
    """`clients` gradio_client clients mixing recommend (50 %), search (30 %) and add_item (20 %) for `seconds`."""
    words = ["space adventure", "toy story", "comedy", "love", "war", "crime drama", "animated", "horror night"]
    accepted: list[tuple[str, str]] = []  # (id, title) of every upload that returned an id
    lat: dict[str, list[float]] = {"recommend": [], "search": [], "add_item": []}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        client = Client(url, verbose=False, download_files=False)
        start.wait()
        deadline = time.time() + seconds
        n = 0
        while time.time() < deadline:
            op = rng.random()
            t0 = time.perf_counter()
            try:
                if op < 0.5:
                    with lock:  # uploads of any client join histories: retrievable by the very next call
                        pool = catalog_ids + [i for i, _ in accepted[-20:]]
                    name = "recommend"
                    out = client.predict(history=rng.sample(pool, 5), k=10, api_name="/recommend")
                    assert len(out) == 10
                elif op < 0.8:
                    name = "search"
                    assert len(client.predict(text=rng.choice(words), k=10, api_name="/search")) == 10
                else:
                    name = "add_item"
                    n += 1
                    path = work / f"w{w}-{n}.png"
                    path.write_bytes(png(seed * 10**6 + w * 10**4 + n, 48, 72))
                    title = f"Load upload {w}-{n}"
                    out = client.predict(image=handle_file(str(path)), title=title, text="", api_name="/add_item")
                    with lock:
                        accepted.append((out["id"], title))
                with lock:
                    lat[name].append((time.perf_counter() - t0) * 1000)
            except Exception as e:  # every failure is counted, the run goes on
                with lock:
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    wall = time.time() - t0
    every = [x for v in lat.values() for x in v]
    stats = {name: {"n": len(v), "p50_ms": float(np.percentile(v, 50)) if v else float("nan"),
                    "p99_ms": float(np.percentile(v, 99)) if v else float("nan")} for name, v in lat.items()}
    stats["all"] = {"n": len(every), "p50_ms": float(np.percentile(every, 50)), "p99_ms": float(np.percentile(every, 99)),
                    "rps": len(every) / wall}
    return {"stats": stats, "accepted": accepted, "errors": errors, "wall_s": wall}


def format_stats(stats: dict) -> str:
    rows = [f"{k:>9}: n={v['n']:5d}  p50={v['p50_ms']:7.1f} ms  p99={v['p99_ms']:7.1f} ms" for k, v in stats.items()]
    return "\n".join(rows) + f"\nthroughput {stats['all']['rps']:.1f} requests/s"


@pytest.mark.slow
def test_load_16_clients_no_errors_no_lost_uploads(tiny_demo, tmp_path):
    seconds = float(os.environ.get("DTREC_LOAD_SECONDS", "60"))
    store = tmp_path / "store"
    proc, url = start_server(tiny_demo, store, tmp_path / "app.log")
    try:
        catalog_ids = [v.id for v in open_rec(tiny_demo, tmp_path / "peek").list_items(limit=10**6)]
        res = run_load(url, catalog_ids, tmp_path, clients=16, seconds=seconds)
        print(f"\nload: 16 clients, {seconds:g} s, app.py default concurrency "
              f"(DTREC_CONCURRENCY={os.environ.get('DTREC_CONCURRENCY', 'default')})\n" + format_stats(res["stats"]))
        assert not res["errors"], res["errors"][:5]
        assert res["stats"]["add_item"]["n"] >= 10 and res["stats"]["recommend"]["n"] >= 10
        accepted = res["accepted"]
        assert len({i for i, _ in accepted}) == len(accepted)
        sample = Client(url, verbose=False, download_files=False)
        for new_id, _ in random.Random(1).sample(accepted, min(20, len(accepted))):  # live, over HTTP
            assert len(sample.predict(history=[new_id], k=3, api_name="/recommend")) == 3
    finally:
        stop_server(proc)
    rec = open_rec(tiny_demo, store)  # and after a restart: every accepted upload, whole
    for new_id, title in accepted:
        view = rec.get(new_id)
        assert view.title == title and view.image and Path(view.image).is_file() and view.is_new
    assert rec.about()["n_uploads"] == len(accepted)
    assert_consistent(rec)
    print(f"accepted uploads: {len(accepted)}, all retrievable after restart")


@pytest.mark.slow
def test_sigkill_during_uploads_loses_no_accepted_item(tiny_demo, tmp_path):
    store = tmp_path / "store"
    proc, url = start_server(tiny_demo, store, tmp_path / "app.log")
    accepted: list[tuple[str, str]] = []
    stop = threading.Event()

    def uploader(w: int) -> None:
        client = Client(url, verbose=False, download_files=False)
        n = 0
        while not stop.is_set():
            n += 1
            path = tmp_path / f"k{w}-{n}.png"
            path.write_bytes(png(w * 10**4 + n, 48, 72))
            try:
                out = client.predict(image=handle_file(str(path)), title=f"Kill upload {w}-{n}", text="",
                                     api_name="/add_item")
            except Exception:  # the server died under this call: its outcome is unknown
                return
            accepted.append((out["id"], f"Kill upload {w}-{n}"))

    threads = [threading.Thread(target=uploader, args=(w,), daemon=True) for w in range(6)]
    try:
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while len(accepted) < 12 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(random.Random(0).uniform(0.0, 0.2))  # uploads are in flight now
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    done = list(accepted)
    assert len(done) >= 12, "too few uploads before the kill"

    rec = open_rec(tiny_demo, store)
    report = rec.about()["recovery"]
    print(f"\nkill: {len(done)} uploads accepted before SIGKILL, "
          f"{rec.about()['n_uploads']} stored after restart; recovery: {report}")
    for new_id, title in done:
        view = rec.get(new_id)
        assert view.title == title and view.image and Path(view.image).is_file()
    assert all(it.image for it in rec.store.items(uploads=True))  # every upload here had an image
    assert_consistent(rec)
    assert not list(store.glob(".index-*.tmp"))
    rec.close()

    proc, url = start_server(tiny_demo, store, tmp_path / "app2.log")  # the app itself starts and serves them
    try:
        client = Client(url, verbose=False, download_files=False)
        ids = [i for i, _ in done]
        assert len(client.predict(history=ids[-10:], k=5, api_name="/recommend")) == 5
    finally:
        stop_server(proc)
