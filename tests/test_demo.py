"""`dtrec build-demo` (dtrec.demo) and `dtrec serve` (its flags, and serving from the package alone)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from app_server import start_server, stop_server
from PIL import Image
from safetensors import safe_open
from synthetic import N_ITEMS

import dtrec
from dtrec.cli import main as cli
from dtrec.data.catalog import Catalog, Item
from dtrec.demo import MAX_HISTORIES, DemoBuildConfig, DemoBuildError, _thumb_sources, folder_mb, movielens_notice


def test_demo_folder_contents(tiny_demo):
    thumb = 64  # what tests/tiny_demo.py builds with
    cat = Catalog.from_frame(__import__("pandas").read_parquet(tiny_demo / "catalog" / "items.parquet"),
                             root=tiny_demo / "catalog")
    with_image = [cat.image_path(i) for i in range(len(cat)) if cat.image_path(i) is not None]
    assert with_image and len(with_image) < len(cat), "fixture has posters and text-only movies"
    for p in with_image:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.width <= thumb
    assert all(isinstance(it.meta.get("genres"), list) for it in cat)

    with safe_open(str(tiny_demo / "catalog" / "features" / "tiny-clip.safetensors"), framework="pt") as f:
        assert str(f.get_tensor("text").dtype) == "torch.float16"
    with safe_open(str(tiny_demo / "model" / "model.safetensors"), framework="pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}

    hist = json.loads((tiny_demo / "histories.json").read_text())
    max_len = json.loads((tiny_demo / "model" / "config.json").read_text())
    max_len = max_len.get("max_len") or max_len["config"]["max_len"]
    assert 0 < len(hist) <= min(20, MAX_HISTORIES)
    assert all(2 <= len(h) <= max_len and all(cat.has(i) for i in h) for h in hist)
    assert not (tiny_demo / "catalog" / "sequences.parquet").exists(), "ratings-derived sequences are not shipped"

    results = json.loads((tiny_demo / "results.json").read_text())
    assert results["dtrec"]["test"]["ndcg@10"] == 0.1 and results["meta"]["seed"] == 0
    notice = (tiny_demo / "NOTICE.md").read_text()
    assert "GroupLens" in notice and "ml1m-images" in notice and f"holds {len(hist)} item-id sequences" in notice
    assert "**MovieLens 100K**" in notice and "`u.data`" in notice  # the fixture is MovieLens-100K
    assert "This demo folder" in (tiny_demo / "README.md").read_text()
    assert folder_mb(tiny_demo) < 1.0
    assert not list(tiny_demo.parent.glob(".demo.build-*")), "the staging folder is cleaned up"


def test_the_data_notice_names_the_movielens_release_the_demo_is_built_from():
    counts = dict(n_histories=300, history_len=20, thumb_size=112, n_posters=3256, n_items=3416)
    one_m, hundred_k = movielens_notice("1m", **counts), movielens_notice("100k", **counts)
    assert "**MovieLens 1M**" in one_m and "`ratings.dat`" in one_m and "movielens/1m/" in one_m
    assert "joined to MovieLens-100K" not in one_m and "100K" not in one_m
    assert "**MovieLens 100K**" in hundred_k and "`u.data`" in hundred_k and "joined to MovieLens-100K" in hundred_k
    assert "3256 of 3416 movies" in one_m and "at most 112 px wide" in one_m


def test_demo_folder_layout(synthetic_demo):
    d = synthetic_demo["dir"]
    for f in ("model/config.json", "model/model.safetensors", "catalog/items.parquet",
              "catalog/features/tiny-clip.safetensors", "item_embeddings.safetensors", "histories.json",
              "results.json", "README.md", "NOTICE.md"):
        assert (d / f).is_file(), f
    thumbs = list((d / "catalog" / "images").glob("*.jpg"))
    assert len(thumbs) == N_ITEMS - N_ITEMS // 4
    hist = json.loads((d / "histories.json").read_text())
    assert hist and all(isinstance(i, str) for h in hist for i in h)


def test_the_built_folder_carries_the_embeddings_a_fresh_store_would_compute(tiny_demo, tmp_path, monkeypatch):
    """Written after the fp16 features and weights, so the key matches what the service reads."""
    import dtrec.serving.sync as sync
    from dtrec.service import Recommender

    calls = []
    monkeypatch.setattr(sync, "item_tower", lambda *a: calls.append(1))
    rec = Recommender.from_folder(tiny_demo, store_dir=tmp_path)
    try:
        assert calls == [], "a fresh store took the carried embeddings"
        with safe_open(str(tiny_demo / "item_embeddings.safetensors"), framework="pt") as f:
            carried = f.get_tensor("embeddings")
        monkeypatch.undo()
        expect = rec.model.item_embeddings(rec._features).numpy()[: len(carried)]
        assert carried.dtype == torch.float32 and abs(carried.numpy() - expect).max() < 1e-5
    finally:
        rec.close()


def test_wide_images_are_capped_in_width(tmp_path, monkeypatch):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (300, 100), (10, 200, 10)).save(tmp_path / "cat" / "wide.png")
    Image.new("RGB", (40, 60), (10, 10, 200)).save(tmp_path / "cat" / "poster.png")
    monkeypatch.chdir(tmp_path)  # a catalog root relative to the working directory, as `--data data/x` gives
    cat = Catalog([Item("w", "Wide", "", "wide.png"), Item("p", "Poster", "", "poster.png"), Item("t", "Text", "")],
                  root="cat")
    (tmp_path / "out").mkdir()
    src = _thumb_sources(cat, 32, Path("out"))  # relative, as build_demo's staging folder beside `--out out`
    assert src.image_path(0).is_file(), "a pre-shrunk image is found whatever the catalog root"
    with Image.open(src.image_path(0)) as im:
        assert im.width <= 32
    assert src.image_path(1) == tmp_path / "cat" / "poster.png", "poster-shaped images are left to the writer"
    assert src.image_path(1).is_file()
    assert src.image_path(2) is None


def test_a_lower_jpeg_quality_makes_smaller_thumbnails_and_the_card_says_so(tiny_demo, tmp_path):
    from dtrec.demo import build_demo

    root = tiny_demo.parent  # tests/tiny_demo.py: root/data, root/ckpt -> root/demo at thumb 64, quality 88
    low = build_demo(DemoBuildConfig(data=str(root / "data"), checkpoint=str(root / "ckpt"), out=str(tmp_path / "low"),
                                     thumb_size=64, n_histories=20, jpeg_quality=40))
    size = {d: sum(p.stat().st_size for p in (d / "catalog" / "images").glob("*.jpg")) for d in (tiny_demo, low)}
    assert 0 < size[low] < 0.8 * size[tiny_demo]
    assert "--jpeg-quality 40" in (low / "README.md").read_text()


@pytest.mark.parametrize("kw", [dict(thumb_size=8), dict(n_histories=MAX_HISTORIES + 1), dict(jpeg_quality=100)])
def test_bad_build_settings(kw):
    with pytest.raises(DemoBuildError):
        DemoBuildConfig(data="d", checkpoint="c", **kw)


def test_build_demo_cli_errors_are_one_line(tmp_path, capsys):
    assert cli(["build-demo", "--data", str(tmp_path / "none"), "--checkpoint", str(tmp_path / "c"),
                "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dtrec build-demo: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "demo").exists()
    assert cli(["build-demo", "--data", "d", "--checkpoint", "c", "--thumb-size", "4"]) == 2
    assert "--thumb-size" in capsys.readouterr().err


def test_serve_refuses_the_removed_app_flag(tmp_path, capsys):
    assert cli(["serve", "--app", str(tmp_path / "app.py")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--app is gone" in err and len(err.splitlines()) == 1


def test_serve_needs_no_checkout(tiny_demo, tmp_path):
    """`dtrec serve` from a copy of the package alone (as a wheel installs it), run outside the checkout,
    starts, answers its API and serves the placeholder it ships."""
    import httpx

    site = tmp_path / "site"
    shutil.copytree(Path(dtrec.__file__).parent, site / "dtrec", ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import dtrec.cli; print(dtrec.cli.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip() == str(site / "dtrec" / "cli.py"), where.stderr
    log = tmp_path / "serve.log"
    proc, url = start_server(tiny_demo, tmp_path / "store", log, command=[sys.executable, "-m", "dtrec.cli", "serve"],
                             cwd=elsewhere, pythonpath=site)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            assert {"/recommend", "/search", "/add_item"} <= set(http.get("gradio_api/info").json()["named_endpoints"])
            event = http.post("gradio_api/call/search", json={"data": ["toy story", 3]}).json()["event_id"]
            assert "event: complete" in http.get(f"gradio_api/call/search/{event}").text
            placeholder = site / "dtrec" / "app" / "placeholder.png"
            assert http.get(f"gradio_api/file={placeholder}").content == placeholder.read_bytes()
    finally:
        stop_server(proc)
    assert "dtrec demo ready" in log.read_text()


def test_find_results(tmp_path):
    from dtrec.demo import find_results

    ckpt = tmp_path / "run" / "best"
    ckpt.mkdir(parents=True)
    assert find_results(ckpt, None) == {}
    (tmp_path / "run" / "results.json").write_text(json.dumps({"dtrec": {"test": {"ndcg@10": 0.3}},
                                                              "meta": {"seed": 1}}))
    assert find_results(ckpt, None)["dtrec"]["test"]["ndcg@10"] == 0.3  # beside the checkpoint
    with pytest.raises(DemoBuildError, match="does not exist"):
        find_results(ckpt, tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DemoBuildError, match="not valid JSON"):
        find_results(ckpt, tmp_path / "bad.json")
    (tmp_path / "wrong.json").write_text(json.dumps({"dtrec": {"test": {"ndcg@10": "high"}}}))
    with pytest.raises(ValueError):
        find_results(ckpt, tmp_path / "wrong.json")
