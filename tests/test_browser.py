"""End to end in headless Chromium: build a history by clicking posters, get recommendations, upload a poster.

Run with `pytest -m browser tests/test_browser.py`. For the README's picture, run it on the real demo:
`DTREC_BROWSER_DEMO=assets/demo DTREC_SCREENSHOT=docs/screenshot.png pytest -m browser tests/test_browser.py`
(the screenshot is always saved under the test's tmp folder too).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from dtrec.bench import free_port

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def url(request, tmp_path_factory):
    """The app over the tiny demo (or $DTREC_BROWSER_DEMO) on a free local port, with a throwaway store."""
    sys.path.insert(0, str(REPO))
    import app
    from dtrec.service import Recommender

    env = os.environ.get("DTREC_BROWSER_DEMO")
    tiny_demo = Path(env).resolve() if env else request.getfixturevalue("tiny_demo")
    store = tmp_path_factory.mktemp("browser-store")
    rec = Recommender.from_folder(tiny_demo, store_dir=store)
    demo = app.build_app(rec)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_kwargs([tiny_demo / "catalog" / "images", store / "images", app.PLACEHOLDER]))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        rec.close()


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30_000)
        try:
            yield pg
        finally:
            browser.close()


def test_click_posters_then_upload(url, page, tmp_path):
    from PIL import Image

    page.goto(url)
    catalog = page.locator("#catalog .thumbnail-item")
    catalog.first.wait_for()
    assert catalog.count() >= 6

    titles = []
    for i in (0, 2, 4):
        titles.append(catalog.nth(i).locator("img").get_attribute("alt"))
        catalog.nth(i).click()
        page.wait_for_function("n => document.querySelectorAll('#history .thumbnail-item').length >= n", arg=len(titles))
    history = page.locator("#history .thumbnail-item")
    assert history.count() == 3

    recs = page.locator("#recs .thumbnail-item")
    page.wait_for_function("() => document.querySelectorAll('#recs .thumbnail-item img').length >= 4")
    rec_alts = [recs.nth(i).locator("img").get_attribute("alt") for i in range(recs.count())]
    assert not set(rec_alts) & set(titles), "history items must not be recommended"
    assert "#1" in recs.first.inner_text()
    assert "ms" in page.locator("#recs-latency").inner_text()

    poster = tmp_path / "upload.png"
    img = Image.new("RGB", (80, 120), (20, 110, 200))
    img.paste((250, 200, 0), (20, 30, 60, 90))
    img.save(poster)
    page.locator("#upload-image input[type=file]").set_input_files(str(poster))
    page.locator("#upload-image img").first.wait_for()
    page.locator("#upload-title textarea, #upload-title input").first.fill("Blue Horizon Test (2025)")
    page.locator("#add-item").click()
    page.locator("#add-status", has_text="Added").wait_for()
    assert "never interacted with" in page.locator("#add-status").inner_text()
    # the new item heads the catalog view and its rank for the current history is shown
    page.wait_for_function(
        "() => (document.querySelector('#catalog .thumbnail-item')?.innerText || '').includes('Blue Horizon Test')")
    page.locator("#new-rank", has_text="ranks").wait_for()

    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("DTREC_SCREENSHOT"):
        dest = Path(os.environ["DTREC_SCREENSHOT"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)


@pytest.mark.slow
def test_a_fresh_browser_session_uploads_after_a_scripted_flood(tiny_demo, page, tmp_path):
    """Issue 18, item 1, as a visitor: 1,010 scripted uploads (a new session and address each) fill the
    cap of 1,000 private uploads; a fresh tab still uploads its poster and sees it."""
    import app
    from PIL import Image

    from dtrec.config import ServeConfig
    from dtrec.service import InputError, Recommender

    store = tmp_path / "store"
    rec = Recommender.from_folder(tiny_demo, store_dir=store, config=ServeConfig(upload_visibility="session"))
    for i in range(1010):
        try:  # whether the flood is accepted is not the point
            rec.add_item(f"Flood {i}", session=f"bot-{i}", client=f"10.0.{i // 256}.{i % 256}")
        except InputError:
            pass
    assert rec.about()["n_uploads"] == 1000
    demo = app.build_app(rec)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_kwargs([tiny_demo / "catalog" / "images", store / "images", app.PLACEHOLDER]))
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#catalog .thumbnail-item").first.wait_for()
        poster = tmp_path / "visitor.png"
        Image.new("RGB", (80, 120), (200, 40, 90)).save(poster)
        page.locator("#upload-image input[type=file]").set_input_files(str(poster))
        page.locator("#upload-image img").first.wait_for()
        page.locator("#upload-title textarea, #upload-title input").first.fill("Visitor After The Flood (2026)")
        page.locator("#add-item").click()
        page.locator("#add-status", has_text="Added").wait_for()
        page.wait_for_function("() => (document.querySelector('#catalog .thumbnail-item')?.innerText || '')"
                               ".includes('Visitor After The Flood')")
        assert rec.about()["n_uploads"] == 1000  # the oldest scripted upload made room
    finally:
        demo.close()
        rec.close()
