"""End to end in headless Chromium: build a history by clicking posters, get recommendations, upload a poster.

Run with `pytest -m browser tests/test_browser.py`. For the README's picture, run it on the real demo:
`DTREC_BROWSER_DEMO=assets/demo DTREC_SCREENSHOT=docs/screenshot.png pytest -m browser tests/test_browser.py`
(the screenshot is always saved under the test's tmp folder too).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app_server import launch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def url(request, tmp_path_factory):
    """The app over the tiny demo (or $DTREC_BROWSER_DEMO) on a free local port, with a throwaway store."""
    from dtrec.service import Recommender

    env = os.environ.get("DTREC_BROWSER_DEMO")
    tiny_demo = Path(env).resolve() if env else request.getfixturevalue("tiny_demo")
    store = tmp_path_factory.mktemp("browser-store")
    rec = Recommender.from_folder(tiny_demo, store_dir=store)
    url, demo = launch(rec, tiny_demo, store)
    try:
        yield url
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
    # the popular start is in the panel from the first load: wait for the history's own recommendations
    page.wait_for_function("""titles => {
        const alts = [...document.querySelectorAll('#recs .thumbnail-item img')].map(i => i.alt);
        return alts.length >= 4 && !alts.some(a => titles.includes(a))
            && document.querySelector('#recs-latency').innerText.includes('ms');
    }""", arg=titles)
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
    page.locator("#add-status", has_text="never interacted with").wait_for()
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


ERRORED = "[data-testid=status-tracker] .error"  # the "Error" pill Gradio puts on an errored output


def _fresh(page, url):
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(url)
    page.locator("#catalog .thumbnail-item").first.wait_for()


def _box_inside(inner: dict, outer: dict, tol: float = 0.5) -> bool:
    return (inner["x"] >= outer["x"] - tol and inner["y"] >= outer["y"] - tol
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + tol
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + tol)


def _below(upper: dict, lower: dict, tol: float = 0.5) -> bool:
    return upper["y"] + upper["height"] <= lower["y"] + tol


def test_a_non_image_upload_is_refused_in_one_sentence_and_cleared(url, page, tmp_path):
    """Issue 18, item 4: an HTML page renamed .jpg gets the API's one sentence in the page, the field
    lets go of it, the cache no longer holds it, and the next poster goes in."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    from dtrec.app import upload_folder

    bad = tmp_path / "not-a-poster-4f1c.jpg"
    bad.write_text("<!doctype html><html><body><h1>not an image</h1></body></html>")
    with pytest.raises(AppError) as e:
        Client(url, verbose=False).predict(image=handle_file(str(bad)), title="Bad", text="", api_name="/add_item")
    sentence = str(e.value).strip()
    assert sentence.endswith(".") and "Traceback" not in sentence

    _fresh(page, url)
    page.locator("#upload-image input[type=file]").set_input_files(str(bad))
    page.locator("#upload-title textarea, #upload-title input").first.fill("A Page Not A Poster (2025)")
    page.locator("#add-item").click()
    status = page.locator("#add-status", has_text="Not added")
    status.wait_for()
    assert sentence in status.inner_text()
    body = page.locator("body").inner_text()
    assert "preprocess" not in body and "Unidentified" not in body and "Traceback" not in body
    page.wait_for_function("() => !document.querySelector('#upload-image img')")  # the field is empty again
    assert page.locator(f"#add-status {ERRORED}").count() == 0
    assert not list(upload_folder().rglob(bad.name)), "the refused file is still in Gradio's cache"

    poster = tmp_path / "good.png"
    Image.new("RGB", (80, 120), (30, 160, 90)).save(poster)
    page.locator("#upload-image input[type=file]").set_input_files(str(poster))
    page.locator("#upload-image img").first.wait_for()
    page.locator("#add-item").click()
    page.locator("#add-status", has_text="never interacted with").wait_for()
    assert "A Page Not A Poster" in page.locator("#add-status").inner_text()
    page.locator("#catalog .thumbnail-item").first.click(timeout=5_000)  # nothing covers the posters
    page.wait_for_function("() => document.querySelectorAll('#history .thumbnail-item').length >= 1")


def test_remove_with_nothing_selected_warns_and_leaves_the_history_usable(url, page):
    """Issue 18, item 5: the mistake is a warning; no "Error" pill is left over the History, whose
    posters still take clicks."""
    _fresh(page, url)
    catalog = page.locator("#catalog .thumbnail-item")
    for n in (1, 2):
        catalog.nth(n).click()
        page.wait_for_function("n => document.querySelectorAll('#history .thumbnail-item').length >= n", arg=n)
    page.get_by_role("button", name="Remove selected").click()
    toast = page.locator(".toast-body", has_text="Select a poster in your history first")
    toast.wait_for()
    assert "warning" in toast.inner_text().lower()
    page.wait_for_function("() => !document.querySelector('#history .pending, #recs .pending')")
    assert page.locator(f"#history {ERRORED}").count() == 0
    assert page.locator(ERRORED).count() == 0
    history = page.locator("#history .thumbnail-item")
    history.first.click(timeout=5_000)  # before the fix, the errored box intercepted this click
    page.locator("#history .thumbnail-item.selected").wait_for()
    page.wait_for_timeout(500)  # the selection event reaches the server before Remove reads it
    page.get_by_role("button", name="Remove selected").click()
    page.wait_for_function("() => document.querySelectorAll('#history .thumbnail-item').length == 1")


def test_layout_at_1400_px(url, page, monkeypatch):
    """Issue 18, item 8, at 1400x900: a starting point before any click, galleries whose labels and
    columns fit, one title per axis in the About plot, and a sentence for an empty search."""
    from dtrec.service import Recommender, Result

    _fresh(page, url)
    # before any click: popular items, said to be popular, not an empty box
    page.wait_for_function("() => document.querySelectorAll('#recs .thumbnail-item').length >= 4")
    assert "popular" in page.locator("#recs-latency").inner_text().lower()

    cat_label = page.locator("#catalog label[data-testid=block-label]")
    assert _below(cat_label.bounding_box(), page.locator("#catalog .thumbnail-item").first.bounding_box())

    catalog = page.locator("#catalog .thumbnail-item")
    for n in range(1, 7):
        catalog.nth(n - 1).click()
        page.wait_for_function("n => document.querySelectorAll('#history .thumbnail-item').length >= n", arg=n)
    panel = page.locator("#history").bounding_box()
    thumbs = page.locator("#history .thumbnail-item")
    boxes = [thumbs.nth(i).bounding_box() for i in range(thumbs.count())]
    first_row = [b for b in boxes if abs(b["y"] - boxes[0]["y"]) < 1]
    assert len(first_row) == 5  # columns=5
    for b in first_row:
        assert _box_inside(b, panel), f"a History poster is cut off: {b} outside {panel}"
    for b in boxes:
        assert panel["x"] <= b["x"] and b["x"] + b["width"] <= panel["x"] + panel["width"] + 0.5
    assert _below(page.locator("#history label[data-testid=block-label]").bounding_box(), boxes[0])

    # the About plot: each axis titled once (a legend repeated "model"), and the titles in view
    page.get_by_text("About the model").click()
    chart = page.locator(".vega-embed").first
    chart.locator("svg .role-axis-title text").first.wait_for()
    titles = [t.text_content() for t in chart.locator("svg .role-axis-title text, svg .role-legend-title text").all()]
    assert sorted(titles) == sorted(set(titles)) and "model" in titles
    block = chart.locator("xpath=ancestor::div[contains(@class, 'block')][1]").bounding_box()
    for t in chart.locator("svg .role-axis-title text").all():
        assert _box_inside(t.bounding_box(), block), f"axis title {t.text_content()!r} is cut off"

    # a search the genre leaves empty: one sentence instead of an empty grid; gone once results return
    original = Recommender.search

    def search(self, text, k=10, **kw):
        return Result([], 0.0) if "zzqx" in text else original(self, text, k, **kw)

    monkeypatch.setattr(Recommender, "search", search)
    genre = page.get_by_role("combobox").first
    genre.click()
    page.get_by_role("option").nth(1).click()
    page.wait_for_function("() => document.querySelectorAll('#catalog .thumbnail-item').length >= 1")
    query = page.get_by_placeholder("Search by title or describe a movie…")
    query.fill("zzqx no such film")
    query.press("Enter")
    note = page.locator("#catalog-note", has_text="No movie")
    note.wait_for()
    assert page.locator("#catalog .thumbnail-item").count() == 0
    query.fill("")
    query.press("Enter")
    note.wait_for(state="hidden")
    assert page.locator("#catalog .thumbnail-item").count() >= 1


@pytest.mark.slow
def test_a_fresh_browser_session_uploads_after_a_scripted_flood(tiny_demo, page, tmp_path):
    """Issue 18, item 1, as a visitor: 1,010 scripted uploads (a new session and address each) fill the
    cap of 1,000 private uploads; a fresh tab still uploads its poster and sees it."""
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
    url, demo = launch(rec, tiny_demo, store)
    try:
        page.goto(url)
        page.locator("#catalog .thumbnail-item").first.wait_for()
        poster = tmp_path / "visitor.png"
        Image.new("RGB", (80, 120), (200, 40, 90)).save(poster)
        page.locator("#upload-image input[type=file]").set_input_files(str(poster))
        page.locator("#upload-image img").first.wait_for()
        page.locator("#upload-title textarea, #upload-title input").first.fill("Visitor After The Flood (2026)")
        page.locator("#add-item").click()
        page.locator("#add-status", has_text="never interacted with").wait_for()
        page.wait_for_function("() => (document.querySelector('#catalog .thumbnail-item')?.innerText || '')"
                               ".includes('Visitor After The Flood')")
        assert rec.about()["n_uploads"] == 1000  # the oldest scripted upload made room
    finally:
        demo.close()
        rec.close()


def test_a_misspelt_title_in_the_search_box_shows_that_movie_first(url, page):
    """Issue 18, item 6: the search box finds a title typed with a typo, and shows it first, as /search does."""
    page.goto(url)
    first = "() => document.querySelector('#catalog .thumbnail-item')?.innerText || ''"
    page.locator("#catalog .thumbnail-item").first.wait_for()
    assert "Godfather" not in page.evaluate(first)  # not first before the search
    query = page.get_by_placeholder("Search by title or describe a movie…")
    query.fill("the godfater")
    query.press("Enter")
    # The tiny demo's title, or MovieLens-1M's own form on the real demo (DTREC_BROWSER_DEMO=assets/demo).
    page.wait_for_function(f"() => /^(The Godfather|Godfather, The) \\(1972\\)/.test(({first})())")
    captions = page.locator("#catalog .thumbnail-item").all_inner_texts()
    assert captions[0].startswith(("The Godfather (1972)", "Godfather, The (1972)")) and len(captions) > 1
