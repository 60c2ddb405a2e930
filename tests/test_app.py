"""The Gradio app's named HTTP API, called with gradio_client against the app on a free local port."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from app_server import launch

from dtrec.app import DELETE_CACHE, load_recommender
from dtrec.app.events import client_address, refused, request_session
from dtrec.app.views import about_markdown, eval_frame, metric_frame, parse_history
from dtrec.cli import build_parser
from dtrec.cli import main as cli
from dtrec.weights import shipped_checkpoint

REPO = Path(__file__).resolve().parents[1]

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402



@pytest.fixture(scope="module")
def served(served_app):
    """(client, recommender): the app over the tiny demo, with its own store, launched once for the module."""
    return Client(served_app.url, verbose=False), served_app.rec


def history_of(rec, n: int = 3) -> list[str]:
    return [v.id for v in rec.list_items(limit=n)]


def test_named_endpoints(served):
    client, _ = served
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/recommend", "/search", "/add_item"} <= set(named)
    # UI-only events are private: the API lists nothing else.
    assert set(named) == {"/recommend", "/search", "/add_item"}


def test_recommend_returns_k_ranked_items(served):
    client, rec = served
    hist = history_of(rec)
    out = client.predict(history=hist, k=5, api_name="/recommend")
    assert len(out) == 5
    assert [r["rank"] for r in out] == [1, 2, 3, 4, 5]
    assert all(r["id"] not in hist for r in out)
    scores = [r["score"] for r in out]
    assert scores == sorted(scores, reverse=True)
    assert all(rec.get(r["id"]).title == r["title"] for r in out)
    # a comma-separated string and a JSON list mean the same history
    assert [r["id"] for r in client.predict(history=", ".join(hist), k=5, api_name="/recommend")] == \
        [r["id"] for r in out]
    assert [r["id"] for r in client.predict(history=str(hist).replace("'", '"'), k=5, api_name="/recommend")] == \
        [r["id"] for r in out]


def test_search(served):
    client, rec = served
    title = rec.list_items(limit=1)[0].title
    out = client.predict(text=title, k=4, api_name="/search")
    assert len(out) == 4
    assert all(r["reason"] == "matches your query" for r in out)
    assert len({r["id"] for r in out}) == 4


def test_add_item_is_recommendable_at_once(served, tmp_path):
    from PIL import Image

    client, rec = served
    png = tmp_path / "poster.png"
    Image.new("RGB", (24, 36), (200, 30, 30)).save(png)
    hist = history_of(rec)
    before = client.predict(history=hist, k=100, api_name="/recommend")
    added = client.predict(image=handle_file(str(png)), title="Crimson Test Reel (2025)", text="a red square",
                           api_name="/add_item")
    assert added["is_new"] is True and added["id"] not in {r["id"] for r in before}
    after = client.predict(history=hist, k=100, api_name="/recommend")
    assert len(after) == len(before) + 1
    mine = [r for r in after if r["id"] == added["id"]]
    assert len(mine) == 1 and mine[0]["is_new"] and mine[0]["has_image"]
    found = client.predict(text="Crimson Test Reel", k=100, api_name="/search")
    assert added["id"] in {r["id"] for r in found}
    # the new item can itself start a history
    assert len(client.predict(history=[added["id"]], k=3, api_name="/recommend")) == 3


@pytest.mark.parametrize("kwargs, words", [
    (dict(history=["no-such-id"], k=5), "Unknown item id"),
    (dict(history=[], k=5), "history"),
    (dict(history="[not json", k=5), "JSON"),
    (dict(history=["1"], k=0), "between 1 and"),
])
def test_bad_recommend_input_is_one_sentence(served, kwargs, words):
    client, _ = served
    with pytest.raises(AppError) as e:
        client.predict(**kwargs, api_name="/recommend")
    msg = str(e.value)
    assert words in msg
    assert "Traceback" not in msg and "File \"" not in msg


def test_bad_upload_is_refused_and_stores_nothing(served, tmp_path):
    client, rec = served
    n = rec.about()["n_uploads"]
    fake = tmp_path / "not-an-image.png"
    fake.write_bytes(b"this is text, not a PNG")
    with pytest.raises(AppError) as e:
        client.predict(image=handle_file(str(fake)), title="Broken", text="", api_name="/add_item")
    assert "image" in str(e.value).lower() and "Traceback" not in str(e.value)
    with pytest.raises(AppError):
        client.predict(image=None, title="   ", text="", api_name="/add_item")
    assert rec.about()["n_uploads"] == n


def test_the_page_and_the_api_give_the_same_order(served_app):
    """The UI's search box and /search both call `Recommender.search`: same items, same order."""
    from dtrec.app import ALL_GENRES, build_app

    demo = build_app(served_app.rec)
    fns = list(demo.fns.values())
    api = next(f.fn for f in fns if f.api_name == "search")
    ui = next(f.fn for f in fns if getattr(f.fn, "__name__", "") == "on_search")
    for query in ("toy story", "toy sotry", "a space adventure", "jedi"):
        api_ids = [r["id"] for r in api(query, 10)]
        _, ui_ids = ui(query, ALL_GENRES)[:2]
        assert ui_ids[:10] == api_ids, query
    assert api("toy story", 10)[0]["title"] == "Toy Story (1995)"


def test_eval_frame_reads_the_results_table():
    about = {"results": {"dtrec": {"test": {"ndcg@10": 0.123456, "n": 9}}, "popularity": {"test": {"ndcg@10": 0.05}},
                         "meta": {"recipe": "movielens", "seed": 42, "env": {"torch": "2.14"}}}}
    df = eval_frame(about)
    assert set(df["model"]) == {"dtrec", "popularity"}
    assert df.loc[df["model"] == "dtrec", "ndcg@10"].item() == pytest.approx(0.1235)
    assert list(metric_frame(df, "ndcg@10")["model"]) == ["dtrec", "popularity"]


def test_parse_history_forms():
    assert parse_history('["1", 2]') == ["1", "2"]
    assert parse_history("1, 2 3") == ["1", "2", "3"]
    assert parse_history(None) == []
    with pytest.raises(ValueError):
        parse_history({"a": 1})


def test_a_refused_upload_s_status_line_is_its_sentence_as_text():
    """The cold-start status quotes the service's sentence, which may quote input, as plain text."""
    line = refused("Unknown item id '<img src=x>' in *bold*.")
    assert line.startswith("⚠️ **Not added.** ")
    assert "<img" not in line and "&lt;img" in line and r"\*bold\*" in line


def test_missing_default_demo_says_to_build_it(tmp_path, monkeypatch, capsys):
    """`dtrec serve` reads ./assets/demo by default (where `dtrec build-demo` writes); `python app.py` names its
    checkout's through DTREC_DEMO. Either one missing says how to make it, in one line."""
    for name in ("DTREC_MODEL", "DTREC_CATALOG", "DTREC_DEMO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dtrec build-demo" in err and "assets/demo" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("DTREC_DEMO", str(tmp_path / "checkout" / "assets" / "demo"))
    assert cli(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dtrec build-demo" in err and str(tmp_path / "checkout") in err and len(err.splitlines()) == 1


def test_serve_takes_the_shipped_model_by_name(tmp_path, monkeypatch):
    """`dtrec serve --model pretrained --catalog DIR`: the shipped multi-domain model, zero-shot on a catalog."""
    import dtrec.app

    seen = {}

    def fake_serve(options, started=None):
        seen["options"] = options
        return 0

    monkeypatch.setattr(dtrec.app, "serve", fake_serve)
    monkeypatch.chdir(tmp_path)  # no folder named `pretrained` here
    assert cli(["serve", "--model", "pretrained", "--catalog", str(tmp_path / "catalog")]) == 0
    assert seen["options"].model == str(shipped_checkpoint("pretrained"))
    assert seen["options"].catalog == str(tmp_path / "catalog")


def test_index_flag_picks_the_served_index(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.delenv("DTREC_INDEX", raising=False)
    assert build_parser().parse_args(["serve"]).index == "flat"
    args = build_parser().parse_args(["serve", "--demo", str(tiny_demo), "--index", "hnsw",
                                      "--store-dir", str(tmp_path)])
    rec, _ = load_recommender(args.demo, args.model, args.catalog, args.store_dir, args.index)
    try:
        assert rec.config.index == "hnsw" and rec.index.effective_kind == "hnsw"
        history = [item.id for item in list(rec.store.items(uploads=False))[:2]]
        assert len(rec.recommend(history, k=3).items) == 3
    finally:
        rec.close()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--index", "annoy"])


def test_uploads_are_private_to_the_browser_session_that_made_them(tiny_demo, tmp_path):
    """With upload_visibility="session" (a public Space), each client session sees only its own uploads."""
    from PIL import Image

    from dtrec.config import ServeConfig
    from dtrec.service import Recommender

    store = tmp_path / "store"
    rec = Recommender.from_folder(tiny_demo, store_dir=store, config=ServeConfig(upload_visibility="session"))
    url, demo = launch(rec, tiny_demo, store)
    try:
        alice, bob = (Client(url, verbose=False) for _ in range(2))
        assert alice.session_hash != bob.session_hash
        png = tmp_path / "poster.png"
        Image.new("RGB", (24, 36), (30, 200, 30)).save(png)
        added = alice.predict(image=handle_file(str(png)), title="Verdant Private Reel (2026)", text="green",
                              api_name="/add_item")
        hist = history_of(rec)
        assert added["id"] in {r["id"] for r in alice.predict(history=hist, k=100, api_name="/recommend")}
        assert added["id"] in {r["id"] for r in alice.predict(text="Verdant Private Reel", k=100, api_name="/search")}
        assert len(alice.predict(history=[added["id"]], k=3, api_name="/recommend")) == 3
        assert added["id"] not in {r["id"] for r in bob.predict(history=hist, k=100, api_name="/recommend")}
        assert added["id"] not in {r["id"] for r in bob.predict(text="Verdant Private Reel", k=100, api_name="/search")}
        with pytest.raises(AppError) as e:
            bob.predict(history=[added["id"]], k=3, api_name="/recommend")
        assert "Unknown item id" in str(e.value)
    finally:
        demo.close()
        rec.close()


def test_refused_files_leave_the_upload_cache_at_once_and_the_cache_is_bounded(tiny_demo, tmp_path, monkeypatch):
    """Issue 18, item 2: a file the app refuses is deleted (no longer served) and the cache has a size bound."""
    import io

    import httpx
    from PIL import Image

    from dtrec.service import Recommender

    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))  # this app's own upload cache, measured alone
    store = tmp_path / "store"
    rec = Recommender.from_folder(tiny_demo, store_dir=store)
    limit = 3 * 1024 * 1024
    url, demo = launch(rec, tiny_demo, store, cache_max_bytes=limit)

    def cache_bytes() -> int:
        return sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())

    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            def upload(name: str, data: bytes) -> str:
                r = http.post("gradio_api/upload", files={"files": (name, data, "image/jpeg")})
                assert r.status_code == 200, r.text
                return r.json()[0]

            def add(path: str, title: str) -> str:
                body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, title, ""]}
                r = http.post("gradio_api/call/add_item", json=body)
                return http.get(f"gradio_api/call/add_item/{r.json()['event_id']}").text

            for name, data in [("program.jpg", b"\x7fELF\x02\x01\x01" + os.urandom(500_000)),
                               ("page.jpg", b"<html><script>alert(1)</script></html>" + b" " * 500_000)]:
                path = upload(name, data)
                assert http.get(f"gradio_api/file={path}").status_code == 200  # served while it waits
                grown = cache_bytes()
                events = add(path, "Junk")
                assert "event: error" in events and "image" in events, events
                assert http.get(f"gradio_api/file={path}").status_code in (403, 404)
                assert not os.path.exists(path) and cache_bytes() <= grown - 500_000
            # an accepted API upload is not kept either: the store holds its own re-encoded thumbnail
            buf = io.BytesIO()
            Image.new("RGB", (20, 30), (9, 9, 9)).save(buf, "PNG")
            path = upload("poster.png", buf.getvalue())
            assert "event: complete" in add(path, "Kept poster") and not os.path.exists(path)
            # files uploaded and never added: the oldest go once the cache passes its bound
            paths = [upload(f"junk{i}.jpg", os.urandom(1024 * 1024)) for i in range(6)]
            assert cache_bytes() <= limit
            assert http.get(f"gradio_api/file={paths[0]}").status_code in (403, 404)
            assert http.get(f"gradio_api/file={paths[-1]}").status_code == 200
            # a request past the poster cap is refused before anything is written
            r = http.post("gradio_api/upload", files={"files": ("big.jpg", os.urandom(6 * 1024 * 1024), "image/jpeg")})
            assert r.status_code == 413 and "5 MB" in r.text and cache_bytes() <= limit
        assert demo.delete_cache == DELETE_CACHE  # what is left is swept once an hour old
    finally:
        demo.close()
        rec.close()


def test_visitors_see_names_and_human_units_never_server_paths(served, tiny_demo):
    """Issue 18, item 3: "About the model" and error messages name no server path and no raw byte count."""
    import httpx

    client, rec = served
    about = rec.about()
    shown = about_markdown(about)
    for secret in (str(tiny_demo), about["store_dir"], about["weights"], str(REPO)):
        assert secret not in shown
    assert "209715200" not in shown and "200 MB" in shown and "model.safetensors" in shown
    with httpx.Client(base_url=client.src, timeout=30) as http:
        for path in (str(REPO / "app.py"), "/etc/passwd", str(Path(about["store_dir"]) / "items.db")):
            body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "Server file", ""]}
            r = http.post("gradio_api/call/add_item", json=body)
            events = http.get(f"gradio_api/call/add_item/{r.json()['event_id']}").text
            assert "event: error" in events and "new-" not in events
            assert path not in events and "Cannot move" not in events and str(REPO) not in events, events
        page = http.get("config").text
        assert about["store_dir"] not in page and str(tiny_demo) not in page and "209715200" not in page


def test_a_request_s_session_and_client(monkeypatch):
    """A request that sent no session hash has none (Gradio substitutes its event id); on a Space the
    client is the first X-Forwarded-For entry, since every socket peer is the Space's proxy."""
    from types import SimpleNamespace

    from gradio.context import LocalContext

    req = SimpleNamespace(session_hash="abc", headers={"x-forwarded-for": "198.51.100.7, 10.0.0.1"},
                          client=SimpleNamespace(host="10.16.3.80"))
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert client_address(req) == "10.16.3.80" and request_session(req) == "abc"
    monkeypatch.setenv("SPACE_ID", "someone/dtrec")
    assert client_address(req) == "198.51.100.7"
    token = LocalContext.event_id.set("abc")
    try:
        assert request_session(req) is None
    finally:
        LocalContext.event_id.reset(token)
    assert request_session(None) is None and client_address(None) is None


def test_start_up_log_has_no_faiss_loader_misses():
    """FAISS logs each CPU build it cannot load ("Could not load library with AVX512 support"); the app's log doesn't."""
    import subprocess

    code = ("from dtrec.app import configure_logging; configure_logging(); "
            "import faiss; print('loaded', faiss.__version__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "loaded" in r.stdout
    assert "Could not load library" not in r.stderr and "faiss.loader" not in r.stderr


def test_the_app_imports_gradio_without_its_stub_writer():
    """`dtrec.app` calls `dtrec.fastimport.skip_gradio_stub_writing()` before any of its modules imports Gradio."""
    import subprocess

    code = ("import dtrec.app, gradio.component_meta as cm; "
            "print(cm.create_or_modify_pyi.__name__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "_no_stub"
