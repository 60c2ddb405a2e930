"""The page and the named API endpoints: each handler is a small function of the Recommender (and the
Blocks, for the upload cache), bound to it where `build_app` wires it to its components."""

from __future__ import annotations

import html
import os
import time
from typing import Any

import gradio as gr

from dtrec.app.events import BadInput, handler, md_text, refused, warn
from dtrec.app.uploads import DELETE_CACHE, discard_upload, upload_path
from dtrec.app.views import (NEW_BADGE, about_markdown, browse_caption, eval_frame, image, metric_frame,
                             parse_history, rec_caption, rec_json, short, y_lim)
from dtrec.serving.errors import ImageError, InputError

TITLE = "dtrec — movies by content"
START_NOTE = ("No history yet, so here are the **most popular movies** among the demo's sample users. "
              "Click any poster to start your history, or press *Load a real user's history*.")
EMPTY_BROWSE = "No movie in this genre matches the search; try another genre or other words."
EMPTY_HISTORY = "Empty: click posters on the left."
ALL_GENRES = "All genres"
BROWSE_LIMIT = 60
# Concurrency (docs/reliability.md): events run in parallel up to this many, the service serialises
# index/store writes itself; a bounded queue refuses floods early.
CONCURRENCY = int(os.environ.get("DTREC_CONCURRENCY", "4"))
QUEUE_MAX = int(os.environ.get("DTREC_QUEUE_MAX", "64"))

CSS = """
/* captions under the posters (not over them), wrapped, two lines at most for the title */
.poster-grid .thumbnail-item { aspect-ratio: auto !important; height: auto !important; display: flex !important;
  flex-direction: column; align-items: stretch; overflow: hidden; }
.poster-grid .thumbnail-item img { aspect-ratio: 2 / 3; width: 100%; height: auto !important; object-fit: cover; }
.poster-grid .caption-label { position: static !important; transform: none !important; max-width: none !important;
  white-space: pre-line !important; text-align: left; background: transparent !important; box-shadow: none !important;
  border: none !important; padding: 4px 3px 2px !important; margin: 0 !important; font-size: 0.76rem; line-height: 1.25;
  overflow: hidden; text-overflow: ellipsis; }
.poster-grid .grid-container { grid-auto-rows: auto !important; align-items: start; }
/* Gradio's columns are at least 100px wide: five of them overflow a narrow panel (the History at 1400px) */
.poster-grid .grid-container { grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important; }
/* the gallery's label floats over its first row of posters: put it above the grid instead */
.poster-grid.block { display: flex !important; flex-direction: column; }
.poster-grid > label[data-testid="block-label"] { position: static !important; align-self: flex-start;
  margin: 0 0 var(--spacing-md) 0 !important; }
.poster-grid > .gallery-container { flex: 1 1 auto; min-height: 0; }
.poster-grid .grid-wrap { height: 100% !important; }
.poster-grid .grid-container.pt-6 { padding-top: var(--spacing-lg) !important; }
#recs .grid-wrap { height: auto !important; max-height: none !important; overflow: visible !important; }
#recs .caption-label { font-size: 0.78rem; }
.hint { color: var(--body-text-color-subdued); font-size: 0.85rem; }
"""


# --------------------------------------------------------------------------- what the galleries show
def browse(rec: Any, query: str, genre: str | None, first: list[str] | None = None) -> tuple[list, list[str]]:
    """The catalog gallery and its ids: the search's ranking for a query, else the catalog; `first` in front."""
    genre = None if not genre or genre == ALL_GENRES else genre
    query = (query or "").strip()
    if query:  # the same ranking as /search: titles the query names, then items by meaning
        views = [r.item for r in rec.search(query, k=BROWSE_LIMIT, genre=genre).items]
    else:
        views = list(rec.list_items(genre=genre, limit=BROWSE_LIMIT))
    if first:
        head = [rec.get(i) for i in first]
        views = head + [v for v in views if v.id not in set(first)]
    views = views[:BROWSE_LIMIT]
    return [(image(v), browse_caption(v)) for v in views], [v.id for v in views]


def history_gallery(rec: Any, history: list[str]) -> tuple[list, str]:
    """The history gallery and the note under it."""
    views = [rec.get(i) for i in history]
    note = f"{len(history)} item(s) — most recent last." if history else EMPTY_HISTORY
    return [(image(v), short(v.title)) for v in views], note


def rank_text(rec: Any, new_id: str | None, history: list[str]) -> str:
    """Where the item just added ranks for the current history."""
    if not new_id:
        return ""
    if not history:
        return "Add some history to see where the new item ranks for you."
    r = rec.rank_of(new_id, history)
    name = md_text(rec.get(new_id).title)
    return f"**{name}** ranks **#{r}** for your current history." if r else f"**{name}** is in your history."


def add_upload(rec: Any, blocks: Any, file: Any, title: str, text: str, *, keep: bool) -> tuple[str, float]:
    """`rec.add_item` on a client's file; a refused file is deleted from Gradio's cache at once, and
    unless `keep` (the page still shows it) so is an accepted one: the store keeps its own re-encoding."""
    path = upload_path(file)
    try:
        out = rec.add_item(title=title or "", text=text or "", image=path, require_session=True)
    except ImageError:
        discard_upload(path, blocks)
        raise
    if not keep:
        discard_upload(path, blocks)
    return out


# --------------------------------------------------------------------------- UI handlers
# History changes return (history, [selection,] gallery, note).
def on_search(rec: Any, query: str, genre: str | None) -> tuple[list, list[str]]:
    """The search box or the genre changed: the catalog gallery."""
    return browse(rec, query, genre)


def on_pick(rec: Any, ids: list[str], history: list[str], evt: gr.SelectData) -> tuple:
    """A poster was clicked: it joins the history (unless there already, or the history is full)."""
    item_id = ids[evt.index]
    if item_id in history:
        gr.Info(f"{html.escape(rec.get(item_id).title)} is already in your history.")
        return history, *history_gallery(rec, history)
    cap = getattr(getattr(rec, "config", None), "max_history", None)
    if cap and len(history) >= cap:
        warn(f"The history holds at most {cap} items; remove one first.")
        return history, *history_gallery(rec, history)
    history = history + [item_id]
    return history, *history_gallery(rec, history)


def on_catalog_change(ids: list[str]) -> gr.Markdown:
    """Whatever the search handlers return, an empty result says so."""
    return gr.Markdown(EMPTY_BROWSE, visible=not ids)


def on_history_select(evt: gr.SelectData) -> int:
    """A history poster was selected: its position, for Remove."""
    return evt.index


def on_remove(rec: Any, history: list[str], sel: int | None) -> tuple:
    """Remove the selected history item."""
    if sel is None or not 0 <= sel < len(history):
        warn("Select a poster in your history first, then press Remove.")
        return history, None, *history_gallery(rec, history)
    history = history[:sel] + history[sel + 1:]
    return history, None, *history_gallery(rec, history)


def on_clear(rec: Any) -> tuple:
    """Empty the history."""
    return [], None, *history_gallery(rec, [])


def on_sample(rec: Any) -> tuple:
    """A real user's history from the demo folder."""
    history = list(rec.sample_history(seed=int(time.time() * 1000) % (2**31)))
    return history, None, *history_gallery(rec, history)


def on_refresh(rec: Any, history: list[str], k: int, new_id: str | None) -> tuple[list, list[str], str, str]:
    """The recommendations gallery, its ids, its note, and the new item's rank."""
    ranked = rank_text(rec, new_id, history)
    if not history:
        # a starting point rather than an empty box: what the demo's sample users watched most
        start = rec.popular(k=k).items
        gal = [(image(r.item), f"#{r.rank} {short(r.item.title)}\n{short(r.reason, 60)}") for r in start]
        note = (START_NOTE if start else
                "Click posters above, or press *Load a real user's history*, to get recommendations.")
        return gal, [r.item.id for r in start], note, ranked
    res = rec.recommend(history, k=k)
    gal = [(image(r.item), rec_caption(r)) for r in res.items]
    return gal, [r.item.id for r in res.items], f"{len(res.items)} recommendations in **{res.latency_ms:.1f} ms**.", ranked


def on_add(rec: Any, blocks: Any, file: Any, title: str, text: str, history: list[str],
           genre: str | None) -> tuple:
    """Add the uploaded poster: (new id, status, nearest items, catalog gallery, its ids, the image field)."""
    keep = gr.skip()
    if file is None and not (title or "").strip():
        return keep, refused("Upload a poster and give it a title first."), keep, keep, keep, keep
    try:
        new_id, ms = add_upload(rec, blocks, file, title, text, keep=True)
    except (InputError, BadInput) as e:
        # a refused file is gone from the cache (add_upload): the field lets go of it too, so the
        # next try starts clean; a refused title or a full store keeps the poster for another try
        bad_file = isinstance(e, (ImageError, BadInput))
        return keep, refused(e.args[0] if e.args else str(e)), keep, keep, keep, None if bad_file else keep
    view = rec.get(new_id)
    sim = rec.similar(new_id, k=8)
    status = (f"Added **{md_text(view.title)}** as id `{new_id}` in {ms:.0f} ms — *{NEW_BADGE}*. "
              "It is in the index now and can be recommended right away.")
    sim_gal = [(image(r.item), f"#{r.rank} {short(r.item.title)} · {r.score:.2f}") for r in sim.items]
    cat_gal, cat_ids = browse(rec, "", genre, first=[new_id])
    return new_id, status, sim_gal, cat_gal, cat_ids, gr.skip()


def on_about(rec: Any) -> str:
    """The "About" facts with live counts."""
    return about_markdown(rec.about())


def on_metric(df: Any, metric: str) -> gr.BarPlot:
    """The bar plot of another metric."""
    return gr.BarPlot(metric_frame(df, metric), y=metric, y_lim=y_lim(df, metric))


def on_unload(rec: Any) -> None:
    """The tab closed: its private uploads are the first to make room."""
    rec.end_session()


# --------------------------------------------------------------------------- API endpoints (JSON in, JSON out)
def api_recommend(rec: Any, history: str | list[str], k: int = 10) -> list[dict]:
    """Recommend k items for a history of item ids (a JSON list or 'id1, id2, ...'), oldest first."""
    return [rec_json(r) for r in rec.recommend(parse_history(history), k=k).items]


def api_search(rec: Any, text: str, k: int = 10) -> list[dict]:
    """Items for a title or a description: titles the text names first, then items by meaning."""
    return [rec_json(r) for r in rec.search(text or "", k=k).items]


def api_add_item(rec: Any, blocks: Any, image: Any, title: str, text: str) -> dict:
    """Add a new item (poster image file, title, text); it is recommendable at once."""
    path = None
    try:
        path = upload_path(image)
        new_id, ms = add_upload(rec, blocks, path, title, text, keep=False)
    finally:  # an API client's file is of no further use, whatever the outcome
        discard_upload(path, blocks)
    return {"id": new_id, "latency_ms": round(float(ms), 2), "is_new": True}


# --------------------------------------------------------------------------- the app
def build_app(rec: Any, *, title: str = TITLE) -> gr.Blocks:
    """The Gradio Blocks app (UI and named API endpoints) over a Recommender."""
    about = rec.about()
    df = eval_frame(about)
    metrics = [c for c in df.columns if c not in ("model", "split", "n")]
    metric0 = next((m for m in ("ndcg@10", "recall@10") if m in metrics), metrics[0] if metrics else None)

    with gr.Blocks(title=title, fill_width=True, delete_cache=DELETE_CACHE) as demo:
        history = gr.State([])
        cat_ids = gr.State([])
        rec_ids = gr.State([])
        hist_sel = gr.State(None)
        new_id = gr.State(None)

        gr.Markdown(f"# {title}\n<span class='hint'>Build a viewing history by clicking posters; the "
                    "recommendations update on every change. Upload a poster that has never been seen to watch "
                    "cold start work.</span>")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                gr.Markdown("### Browse the catalog")
                with gr.Row():
                    query = gr.Textbox(placeholder="Search by title or describe a movie…", show_label=False,
                                       scale=3, submit_btn=True)
                    genre = gr.Dropdown([ALL_GENRES] + list(rec.genres()), value=ALL_GENRES, show_label=False,
                                        scale=1, filterable=True)
                catalog = gr.Gallery(label="Catalog — click a poster to add it to your history", columns=6,
                                     height=560, allow_preview=False, object_fit="cover",
                                     elem_classes="poster-grid", elem_id="catalog", buttons=[])
                catalog_note = gr.Markdown(visible=False, elem_id="catalog-note")
            with gr.Column(scale=2):
                gr.Markdown("### Your history")
                hist_gal = gr.Gallery(label="History (select one, then Remove)", columns=5, height=400,
                                      allow_preview=False, object_fit="cover", elem_classes="poster-grid",
                                      elem_id="history", buttons=[])
                hist_note = gr.Markdown(EMPTY_HISTORY, elem_classes="hint")
                with gr.Row():
                    remove_btn = gr.Button("Remove selected", size="sm")
                    clear_btn = gr.Button("Clear", size="sm")
                sample_btn = gr.Button("Load a real user's history", size="sm", variant="secondary")
                k = gr.Slider(4, 24, value=12, step=1, label="How many recommendations")

        gr.Markdown("### Recommended for you")
        latency = gr.Markdown("Add a few movies to your history to get recommendations.", elem_classes="hint",
                              elem_id="recs-latency")
        recs = gr.Gallery(show_label=False, columns=8, height=None, allow_preview=False,
                          object_fit="cover", elem_classes="poster-grid", elem_id="recs", buttons=[])

        with gr.Accordion("Add a new item (cold start)", open=True):
            with gr.Row(equal_height=False):
                up_image = gr.Image(type="filepath", label="Poster", sources=["upload", "clipboard"],
                                    height=260, scale=1, elem_id="upload-image")
                with gr.Column(scale=2):
                    up_title = gr.Textbox(label="Title", placeholder="e.g. My Short Film (2024)",
                                          elem_id="upload-title")
                    up_text = gr.Textbox(label="Description (optional)", lines=3,
                                         placeholder="Genres, plot, cast…")
                    add_btn = gr.Button("Add item", variant="primary", elem_id="add-item")
                    add_status = gr.Markdown(elem_id="add-status")
                    rank_md = gr.Markdown(elem_id="new-rank")
                with gr.Column(scale=3):
                    similar = gr.Gallery(label="Nearest items to the new one (item tower)", columns=4,
                                         height=300, allow_preview=False, object_fit="cover",
                                         elem_classes="poster-grid", buttons=[])

        with gr.Accordion("About the model", open=False):
            about_md = gr.Markdown(about_markdown(about))
            if not df.empty:
                gr.Dataframe(df, label="Evaluation (leave-one-out, full ranking)", interactive=False, wrap=True)
            if metric0:
                with gr.Row(equal_height=False):
                    metric = gr.Dropdown(metrics, value=metric0, label="Metric (test split)", scale=1)
                    # no color="model": its legend would title the bars "model" a second time; the title
                    # inside the chart, not a label: Gradio sizes the chart to the block, label or not,
                    # and a label pushed the axis titles out of sight
                    plot = gr.BarPlot(metric_frame(df, metric0), x="model", y=metric0, title="Test split by model",
                                      y_lim=y_lim(df, metric0), show_label=False, height=260, scale=3,
                                      elem_id="about-plot")
                metric.change(handler(on_metric, df), metric, plot, api_visibility="private")

        # Hidden components give /add_item a real file upload (validated by Gradio, then the service).
        with gr.Row(visible=False):
            api_image = gr.File(type="filepath", file_types=["image"], label="image")
            api_title = gr.Textbox(label="title")
            api_text = gr.Textbox(label="text")
            api_out = gr.JSON()
            api_btn = gr.Button()

        # -- wiring -----------------------------------------------------------------
        priv = {"api_visibility": "private"}
        search = handler(on_search, rec)
        pick = handler(on_pick, rec)
        refresh = dict(fn=handler(on_refresh, rec), inputs=[history, k, new_id],
                       outputs=[recs, rec_ids, latency, rank_md], show_progress="minimal", **priv)
        history_out = [history, hist_sel, hist_gal, hist_note]

        demo.load(search, [query, genre], [catalog, cat_ids], **priv)
        demo.load(handler(on_about, rec), None, about_md, **priv)  # live counts
        query.submit(search, [query, genre], [catalog, cat_ids], **priv)
        genre.change(search, [query, genre], [catalog, cat_ids], **priv)
        catalog.select(pick, [cat_ids, history], [history, hist_gal, hist_note], **priv).success(**refresh)
        recs.select(pick, [rec_ids, history], [history, hist_gal, hist_note], **priv).success(**refresh)
        hist_gal.select(handler(on_history_select), None, hist_sel, **priv)
        remove_btn.click(handler(on_remove, rec), [history, hist_sel], history_out, **priv).success(**refresh)
        clear_btn.click(handler(on_clear, rec), None, history_out, **priv).success(**refresh)
        sample_btn.click(handler(on_sample, rec), None, history_out, **priv).success(**refresh)
        k.release(**refresh)
        # preprocess=False: the service, not Gradio's decoder, is the first to read a client's file
        add_btn.click(handler(on_add, rec, demo), [up_image, up_title, up_text, history, genre],
                      [new_id, add_status, similar, catalog, cat_ids, up_image], preprocess=False,
                      **priv).success(**refresh)
        # whatever the search handlers return, an empty result says so (the ids change with every result)
        cat_ids.change(handler(on_catalog_change), cat_ids, catalog_note, **priv)
        demo.load(**refresh)  # the starting point, before any click
        demo.unload(handler(on_unload, rec))

        gr.api(handler(api_recommend, rec), api_name="recommend", queue=False)
        gr.api(handler(api_search, rec), api_name="search", queue=False)
        api_btn.click(handler(api_add_item, rec, demo), [api_image, api_title, api_text], api_out,
                      api_name="add_item", preprocess=False,
                      api_description="Add a new item (poster image file, title, text); returns its id.")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_MAX)
    return demo
