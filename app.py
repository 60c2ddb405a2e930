"""dtrec demo: a Gradio UI and HTTP API over `dtrec.service.Recommender`.

Only layout and event wiring live here; every answer comes from the
Recommender (see docs/architecture.md). Run `python app.py` for the embedded
default in assets/demo, or `python app.py --help` for the flags.

Named API endpoints (callable with `gradio_client`):
  /recommend (history, k) -> list of items     history: JSON list or "id1, id2, ..."
  /search    (text, k)    -> list of items
  /add_item  (image, title, text) -> {"id", "latency_ms"}

Files clients send land in Gradio's upload cache: at most MAX_FILE_SIZE a request, the cache
trimmed to CACHE_MAX_BYTES (oldest first) after every upload and swept of files older than an
hour; a file the app refuses, and every /add_item file once handled, is deleted at once.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import html
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

_T0 = time.perf_counter()  # start → ready is measured from here: gradio, torch and model loading included

# A local demo sends no usage statistics unless the user opts in.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from dtrec.fastimport import skip_gradio_stub_writing  # noqa: E402

skip_gradio_stub_writing()  # halves `import gradio` (see dtrec/fastimport.py)
import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULT_DEMO = ROOT / "assets" / "demo"
PLACEHOLDER = ROOT / "assets" / "placeholder.png"
NEW_BADGE = "new — never interacted with"
START_NOTE = ("No history yet, so here are the **most popular movies** among the demo's sample users. "
              "Click any poster to start your history, or press *Load a real user's history*.")
EMPTY_BROWSE = "No movie in this genre matches the search; try another genre or other words."
ALL_GENRES = "All genres"
BROWSE_LIMIT = 60
MAX_K = 100
# Gradio's upload cache (see the module docstring): a poster is well under 5 MB; the cache keeps what
# visitors are about to add, not an archive.
MAX_FILE_SIZE = 5 * 1024 * 1024
CACHE_MAX_BYTES = int(float(os.environ.get("DTREC_UPLOAD_CACHE_MB", "100")) * 1024 * 1024)
DELETE_CACHE = (600, 3600)  # every 10 minutes, delete cached files older than an hour

log = logging.getLogger("dtrec.app")

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


# Concurrency (see the README's Reliability section): events run in parallel up to this many,
# the service serialises index/store writes itself; a bounded queue refuses floods early.
CONCURRENCY = int(os.environ.get("DTREC_CONCURRENCY", "4"))
QUEUE_MAX = int(os.environ.get("DTREC_QUEUE_MAX", "64"))

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$])")


def md_text(text: str) -> str:
    """`text` (a user-supplied title) escaped so that Markdown shows it as plain text, never markup."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


# --------------------------------------------------------------------------- error boundary
_REQUEST = "_dtrec_request"


class BadInput(ValueError):
    """A request the app itself refuses; the message is one sentence shown to the user as is."""


def warn(message: str) -> None:
    """Show a visitor's mistake as a warning toast.

    A UI handler warns and returns normal values instead of raising gr.Error, which would mark every
    output component errored: a white box with an "Error" pill that stays and swallows clicks.
    """
    gr.Warning(html.escape(message, quote=False))  # toasts render HTML, and messages may quote input


def refused(message: str) -> str:
    """The cold-start status line for an upload the service refused: its one sentence, as plain text."""
    return f"⚠️ **Not added.** {md_text(message)}"


def request_session(request: Any) -> str | None:
    """The browser session of a request (Gradio's session hash), or None when the client sent none."""
    session = getattr(request, "session_hash", None)
    if session is None:
        return None
    from gradio.context import LocalContext

    # Gradio gives an event whose request carried no session hash its own event id as one: a
    # "session" minted per request, which must count as none (issue 18, item 1).
    return None if session == LocalContext.event_id.get(None) else str(session)


def client_address(request: Any) -> str | None:
    """The network address a request came from (the key of the per-client upload limit)."""
    if request is None:
        return None
    if os.environ.get("SPACE_ID"):
        # Behind the Space's proxy every socket peer is the proxy: the client is in X-Forwarded-For.
        # Its first entry is taken; were a client able to prepend its own, the limit would be
        # evaded, never turned against every visitor at once (as one shared proxy address would).
        try:
            forwarded = dict(request.headers).get("x-forwarded-for", "")
        except Exception:
            forwarded = ""
        first = forwarded.split(",")[0].strip()
        if first:
            return first
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or None


def _user_errors(fn: Callable) -> Callable:
    """Wrap a handler: it runs in its browser session's scope, and bad input becomes one gr.Error sentence.

    The wrapper's signature is the handler's plus a last `gr.Request` parameter, which Gradio fills
    with the event's request (its documented way to hand a handler the session); the handler never
    sees it. Anything unexpected is logged, never shown as a traceback.
    """
    from dtrec.service import InputError, session_scope

    sig = inspect.signature(fn)
    n_params = len(sig.parameters)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request = kwargs.pop(_REQUEST, None)
        # Gradio passes the request positionally, after the handler's inputs (which may rely on defaults)
        if len(args) > n_params or (args and isinstance(args[-1], gr.Request)):
            request, args = args[-1], args[:-1]
        try:
            with session_scope(request_session(request), client_address(request)):
                return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (InputError, BadInput) as e:  # our own one-sentence refusals; any other error may name internals
            msg = e.args[0] if e.args else str(e)
            # gr.Error renders HTML, and messages may quote user input (an unknown id)
            raise gr.Error(html.escape(str(msg), quote=False), print_exception=False) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error("Something went wrong on the server; the error was logged.", print_exception=False) from None

    request_param = inspect.Parameter(_REQUEST, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                      annotation=gr.Request)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), request_param])  # type: ignore[attr-defined]
    # a new dict: functools.wraps shares the handler's; Gradio finds the request by this type hint
    wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), _REQUEST: gr.Request}
    return wrapper


# --------------------------------------------------------------------------- Gradio's upload cache
def upload_folder() -> Path:
    """Gradio's upload cache ($GRADIO_TEMP_DIR, else <tmp>/gradio): where client files land."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def upload_path(value: Any) -> str | None:
    """The server path of a client's upload (a Gradio FileData dict, or a path), which must lie in the
    upload cache; None when there is no file."""
    if value is None:
        return None
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, (str, Path)) or not str(path):
        raise BadInput("The image must be a file uploaded with this request.")
    p = Path(path).resolve()
    if not p.is_relative_to(upload_folder()):  # Gradio checks this for HTTP calls; callers in-process too
        raise BadInput("The image must be a file uploaded with this request.")
    return str(p)


def discard_upload(path: str | None, blocks: Any = None) -> None:
    """Delete a client's file from the upload cache now (and its folder when empty), so it is no longer served."""
    if not path:
        return
    p = Path(path).resolve()
    root = upload_folder()
    if not p.is_relative_to(root) or p == root:
        return
    p.unlink(missing_ok=True)
    if blocks is not None:
        blocks.upload_file_set.discard(str(p))
        blocks.upload_file_set.discard(path)
    if p.parent != root:
        try:
            p.parent.rmdir()  # Gradio keeps each file in a folder named by its hash
        except OSError:
            pass


def trim_upload_cache(blocks: Any, max_bytes: int) -> int:
    """Delete the oldest files clients uploaded until those left hold at most `max_bytes`; returns bytes left."""
    files = []
    for f in list(blocks.upload_file_set):
        try:
            st = os.stat(f)
        except OSError:  # deleted already, or still being moved into place
            continue
        files.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in files)
    for _, size, f in sorted(files):
        if total <= max_bytes:
            break
        discard_upload(f, blocks)
        total -= size
    return total


class UploadCacheGuard:
    """ASGI middleware on Gradio's file-receiving routes: refuses a request body over `max_request_bytes`
    (413, before anything is written) and trims the upload cache to `max_bytes` after each upload."""

    ROUTES = ("/gradio_api/upload", "/gradio_api/process_recording")

    def __init__(self, app: Any, max_request_bytes: int, max_bytes: int):
        self.app, self.max_request_bytes, self.max_bytes = app, max_request_bytes, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "").rstrip("/")
        if scope.get("type") != "http" or scope.get("method") != "POST" or not path.endswith(self.ROUTES):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is None or not length.isdigit() or int(length) > self.max_request_bytes:
            # Gradio's own cap is per file, and one request may carry a thousand files
            from starlette.responses import PlainTextResponse

            msg = f"The upload is larger than {MAX_FILE_SIZE // (1024 * 1024)} MB, the most a poster may be."
            await PlainTextResponse(msg, status_code=413)(scope, receive, send)
            return
        blocks = getattr(scope.get("app"), "get_blocks", lambda: None)()
        if blocks is None or not path.endswith("/upload"):
            await self.app(scope, receive, send)
            return
        import anyio

        async def send_after_trim(message: dict) -> None:
            if message.get("type") == "http.response.start":  # the bound holds by the time the client hears back
                await anyio.to_thread.run_sync(trim_upload_cache, blocks, self.max_bytes)
            await send(message)

        await self.app(scope, receive, send_after_trim)
        # again for files Gradio moves into place after answering (when its temp folder is on another disk)
        await anyio.to_thread.run_sync(trim_upload_cache, blocks, self.max_bytes)


# --------------------------------------------------------------------------- formatting
def _image(view: Any) -> str:
    """The poster path of an item, or the placeholder for text-only items."""
    return view.image if view.image else str(PLACEHOLDER)


def _short(title: str, n: int = 42) -> str:
    return title if len(title) <= n else title[: n - 1] + "…"


def _browse_caption(view: Any) -> str:
    return f"NEW · {_short(view.title)}" if view.is_new else _short(view.title)


def _rec_caption(r: Any) -> str:
    new = f" · {NEW_BADGE}" if r.item.is_new else ""
    return f"#{r.rank} {_short(r.item.title)}\nscore {r.score:.2f}{new}\n{_short(r.reason, 60)}"


def _item_json(view: Any) -> dict:
    return {"id": view.id, "title": view.title, "meta": view.meta, "is_new": bool(view.is_new),
            "has_image": bool(view.image)}


def _rec_json(r: Any) -> dict:
    return {**_item_json(r.item), "rank": int(r.rank), "score": round(float(r.score), 6),
            "reason": r.reason, "reason_id": r.reason_id}


def parse_history(history: Any) -> list[str]:
    """Item ids from a list, a JSON list string, or a comma/space-separated string."""
    if history is None:
        return []
    if isinstance(history, str):
        s = history.strip()
        if s.startswith("["):
            try:
                history = json.loads(s)
            except json.JSONDecodeError:
                raise BadInput("The history is not valid JSON; send a list of item ids or 'id1, id2'.") from None
        else:
            return [p for p in s.replace(",", " ").split() if p]
    if not isinstance(history, (list, tuple)):
        raise BadInput("The history must be a list of item ids or a comma-separated string.")
    return [str(h).strip() for h in history if str(h).strip()]


def parse_k(k: Any) -> int:
    """A result count between 1 and MAX_K."""
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise BadInput(f"k must be a whole number between 1 and {MAX_K}.") from None
    if not 1 <= k <= MAX_K:
        raise BadInput(f"k must be between 1 and {MAX_K}, not {k}.")
    return k


def eval_frame(about: dict) -> pd.DataFrame:
    """The model card's evaluation table as rows of (model, split, metrics...)."""
    table = next((about[k] for k in ("results", "eval", "evaluation", "metrics") if about.get(k)), None)
    rows = []
    if isinstance(table, dict):
        for model, splits in table.items():
            if model == "meta" or not isinstance(splits, dict):  # "meta": the recipe's provenance
                continue
            for split, metrics in splits.items():
                if isinstance(metrics, dict):
                    rows.append({"model": model, "split": split,
                                 **{m: v for m, v in metrics.items() if isinstance(v, (int, float))}})
    elif isinstance(table, list):
        rows = [r for r in table if isinstance(r, dict)]
    df = pd.DataFrame(rows)
    for c in df.columns:
        if c not in ("model", "split", "n") and pd.api.types.is_float_dtype(df[c]):
            df[c] = df[c].round(4)
    return df


def metric_frame(df: pd.DataFrame, metric: str, split: str = "test") -> pd.DataFrame:
    """One metric of one split per model, for the bar plot."""
    if df.empty or metric not in df.columns:
        return pd.DataFrame({"model": [], metric or "value": []})
    sub = df[df["split"] == split] if "split" in df.columns and (df["split"] == split).any() else df
    return sub[["model", metric]].dropna().reset_index(drop=True)


def _y_lim(df: pd.DataFrame, metric: str) -> list[float]:
    """Bars start at zero so that their heights compare."""
    top = float(metric_frame(df, metric)[metric].max()) if metric in df.columns else 1.0
    return [0.0, round(top * 1.15, 4) if top > 0 else 1.0]


def about_facts(about: dict) -> list[tuple[str, Any]]:
    """The facts of `Recommender.about()` a visitor may see: names, never server paths, and sizes in human units."""
    from dtrec.service import human_bytes

    about = dict(about)
    hidden = {"results", "eval", "evaluation", "metrics", "model_card", "store_dir", "recovery"}
    if "n_uploads" in about and "max_uploads" in about:
        about["uploads"] = f"{int(about['n_uploads']):,} of {int(about['max_uploads']):,}"
        hidden |= {"n_uploads", "max_uploads"}
    if "upload_bytes" in about and "max_upload_total_bytes" in about:
        used, cap = human_bytes(about["upload_bytes"]), human_bytes(about["max_upload_total_bytes"])
        about["upload storage"] = f"{used} of {cap}"
        hidden |= {"upload_bytes", "max_upload_total_bytes"}
    out = []
    for k, v in about.items():
        if k in hidden or isinstance(v, (dict, list)):
            continue
        if k.endswith("_bytes") and isinstance(v, (int, float)):
            v = human_bytes(v)
        elif isinstance(v, str) and (os.path.isabs(v) or v.startswith("~")):
            v = Path(v).name  # a server folder or file (the weights, a model folder): its name only
        elif isinstance(v, int) and not isinstance(v, bool):
            v = f"{v:,}"
        out.append((k.replace("_", " "), v))
    return out


def about_markdown(about: dict) -> str:
    """A short description of the served model and a table of its facts."""
    facts = about_facts(about)
    lines = ["dtrec is an ID-free two-tower sequential recommender: an **item tower** encodes each "
             "item's content (poster and/or text), a **user tower** reads your history and predicts the "
             "next item's embedding, and FAISS retrieves the nearest items. Because items are known only "
             "by content, an uploaded poster is recommendable the moment it is added — no retraining.", "",
             "| | | | |", "|---|---|---|---|"]
    half = (len(facts) + 1) // 2
    for (k1, v1), right in zip(facts[:half], facts[half:] + [("", "")]):
        k2, v2 = right
        lines.append(f"| **{k1}** | `{v1}` | {f'**{k2}**' if k2 else ''} | {f'`{v2}`' if k2 else ''} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the app
def build_app(rec: Any, *, title: str = "dtrec — movies by content") -> gr.Blocks:
    """The Gradio Blocks app (UI and named API endpoints) over a Recommender."""

    def browse(query: str, genre: str | None, first: list[str] | None = None) -> tuple[list, list[str]]:
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
        return [(_image(v), _browse_caption(v)) for v in views], [v.id for v in views]

    def history_gallery(history: list[str]) -> tuple[list, str]:
        views = [rec.get(i) for i in history]
        note = f"{len(history)} item(s) — most recent last." if history else "Empty: click posters on the left."
        return [(_image(v), _short(v.title)) for v in views], note

    def recommendations(history: list[str], k: int, new_id: str | None) -> tuple[list, list[str], str, str]:
        rank_text = _rank_text(new_id, history)
        if not history:
            # a starting point rather than an empty box: what the demo's sample users watched most
            start = rec.popular(k=parse_k(k)).items
            gal = [(_image(r.item), f"#{r.rank} {_short(r.item.title)}\n{_short(r.reason, 60)}") for r in start]
            note = (START_NOTE if start else
                    "Click posters above, or press *Load a real user's history*, to get recommendations.")
            return gal, [r.item.id for r in start], note, rank_text
        res = rec.recommend(history, k=parse_k(k))
        gal = [(_image(r.item), _rec_caption(r)) for r in res.items]
        return gal, [r.item.id for r in res.items], f"{len(res.items)} recommendations in **{res.latency_ms:.1f} ms**.", rank_text

    def _rank_text(new_id: str | None, history: list[str]) -> str:
        if not new_id:
            return ""
        if not history:
            return "Add some history to see where the new item ranks for you."
        r = rec.rank_of(new_id, history)
        name = md_text(rec.get(new_id).title)
        return f"**{name}** ranks **#{r}** for your current history." if r else f"**{name}** is in your history."

    # -- UI handlers: history changes return (history, [selection,] gallery, note) ----
    @_user_errors
    def on_search(query: str, genre: str | None):
        return browse(query, genre)

    @_user_errors
    def on_pick(ids: list[str], history: list[str], evt: gr.SelectData):
        item_id = ids[evt.index]
        if item_id in history:
            gr.Info(f"{html.escape(rec.get(item_id).title)} is already in your history.")
            return history, *history_gallery(history)
        cap = getattr(getattr(rec, "config", None), "max_history", None)
        if cap and len(history) >= cap:
            warn(f"The history holds at most {cap} items; remove one first.")
            return history, *history_gallery(history)
        history = history + [item_id]
        return history, *history_gallery(history)

    @_user_errors
    def on_catalog_change(ids: list[str]):
        return gr.Markdown(EMPTY_BROWSE, visible=not ids)

    @_user_errors
    def on_history_select(evt: gr.SelectData):
        return evt.index

    @_user_errors
    def on_remove(history: list[str], sel: int | None):
        if sel is None or not 0 <= sel < len(history):
            warn("Select a poster in your history first, then press Remove.")
            return history, None, *history_gallery(history)
        history = history[:sel] + history[sel + 1:]
        return history, None, *history_gallery(history)

    @_user_errors
    def on_clear():
        return [], None, *history_gallery([])

    @_user_errors
    def on_sample():
        history = list(rec.sample_history(seed=int(time.time() * 1000) % (2**31)))
        return history, None, *history_gallery(history)

    @_user_errors
    def on_refresh(history: list[str], k: int, new_id: str | None):
        return recommendations(history, k, new_id)

    def add_upload(image: Any, title: str, text: str, *, keep: bool) -> tuple[str, float]:
        """`rec.add_item` on a client's file; a refused file is deleted from Gradio's cache at once, and
        unless `keep` (the page still shows it) so is an accepted one: the store keeps its own re-encoding."""
        from dtrec.service import ImageError

        path = upload_path(image)
        try:
            out = rec.add_item(title=title or "", text=text or "", image=path, require_session=True)
        except ImageError:
            discard_upload(path, demo)
            raise
        if not keep:
            discard_upload(path, demo)
        return out

    @_user_errors
    def on_add(image: Any, title: str, text: str, history: list[str], genre: str | None):
        from dtrec.service import ImageError, InputError

        keep = gr.skip()
        if image is None and not (title or "").strip():
            return keep, refused("Upload a poster and give it a title first."), keep, keep, keep, keep
        try:
            new_id, ms = add_upload(image, title, text, keep=True)
        except (InputError, BadInput) as e:
            # a refused file is gone from the cache (add_upload): the field lets go of it too, so the
            # next try starts clean; a refused title or a full store keeps the poster for another try
            bad_file = isinstance(e, (ImageError, BadInput))
            return keep, refused(e.args[0] if e.args else str(e)), keep, keep, keep, None if bad_file else keep
        view = rec.get(new_id)
        sim = rec.similar(new_id, k=8)
        status = (f"Added **{md_text(view.title)}** as id `{new_id}` in {ms:.0f} ms — *{NEW_BADGE}*. "
                  "It is in the index now and can be recommended right away.")
        sim_gal = [(_image(r.item), f"#{r.rank} {_short(r.item.title)} · {r.score:.2f}") for r in sim.items]
        cat_gal, cat_ids = browse("", genre, first=[new_id])
        return new_id, status, sim_gal, cat_gal, cat_ids, gr.skip()

    # -- API endpoints (JSON in, JSON out) ------------------------------------------
    @_user_errors
    def api_recommend(history: str | list[str], k: int = 10) -> list[dict]:
        """Recommend k items for a history of item ids (a JSON list or 'id1, id2, ...'), oldest first."""
        return [_rec_json(r) for r in rec.recommend(parse_history(history), k=parse_k(k)).items]

    @_user_errors
    def api_search(text: str, k: int = 10) -> list[dict]:
        """Items for a title or a description: titles the text names first, then items by meaning."""
        return [_rec_json(r) for r in rec.search(text or "", k=parse_k(k)).items]

    @_user_errors
    def api_add_item(image: Any, title: str, text: str) -> dict:
        """Add a new item (poster image file, title, text); it is recommendable at once."""
        path = None
        try:
            path = upload_path(image)
            new_id, ms = add_upload(path, title, text, keep=False)
        finally:  # an API client's file is of no further use, whatever the outcome
            discard_upload(path, demo)
        return {"id": new_id, "latency_ms": round(float(ms), 2), "is_new": True}

    @_user_errors
    def on_unload():
        rec.end_session()  # the tab closed: its private uploads are the first to make room

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
                hist_note = gr.Markdown("Empty: click posters on the left.", elem_classes="hint")
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
                                      y_lim=_y_lim(df, metric0), show_label=False, height=260, scale=3,
                                      elem_id="about-plot")
                metric.change(lambda m: gr.BarPlot(metric_frame(df, m), y=m, y_lim=_y_lim(df, m)), metric, plot,
                              api_visibility="private")

        # Hidden components give /add_item a real file upload (validated by Gradio, then the service).
        with gr.Row(visible=False):
            api_image = gr.File(type="filepath", file_types=["image"], label="image")
            api_title = gr.Textbox(label="title")
            api_text = gr.Textbox(label="text")
            api_out = gr.JSON()
            api_btn = gr.Button()

        # -- wiring -----------------------------------------------------------------
        priv = {"api_visibility": "private"}
        refresh = dict(fn=on_refresh, inputs=[history, k, new_id], outputs=[recs, rec_ids, latency, rank_md],
                       show_progress="minimal", **priv)

        demo.load(on_search, [query, genre], [catalog, cat_ids], **priv)
        demo.load(_user_errors(lambda: about_markdown(rec.about())), None, about_md, **priv)  # live counts
        query.submit(on_search, [query, genre], [catalog, cat_ids], **priv)
        genre.change(on_search, [query, genre], [catalog, cat_ids], **priv)
        catalog.select(on_pick, [cat_ids, history], [history, hist_gal, hist_note], **priv).success(**refresh)
        recs.select(on_pick, [rec_ids, history], [history, hist_gal, hist_note], **priv).success(**refresh)
        hist_gal.select(on_history_select, None, hist_sel, **priv)
        remove_btn.click(on_remove, [history, hist_sel], [history, hist_sel, hist_gal, hist_note],
                         **priv).success(**refresh)
        clear_btn.click(on_clear, None, [history, hist_sel, hist_gal, hist_note], **priv).success(**refresh)
        sample_btn.click(on_sample, None, [history, hist_sel, hist_gal, hist_note], **priv).success(**refresh)
        k.release(**refresh)
        # preprocess=False: the service, not Gradio's decoder, is the first to read a client's file
        add_btn.click(on_add, [up_image, up_title, up_text, history, genre],
                      [new_id, add_status, similar, catalog, cat_ids, up_image], preprocess=False,
                      **priv).success(**refresh)
        # whatever the search handlers return, an empty result says so (the ids change with every result)
        cat_ids.change(on_catalog_change, cat_ids, catalog_note, **priv)
        demo.load(**refresh)  # the starting point, before any click
        demo.unload(on_unload)

        gr.api(api_recommend, api_name="recommend", queue=False)
        gr.api(api_search, api_name="search", queue=False)
        api_btn.click(api_add_item, [api_image, api_title, api_text], api_out, api_name="add_item", preprocess=False,
                      api_description="Add a new item (poster image file, title, text); returns its id.")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_MAX)
    return demo


def launch_kwargs(allowed: list[str | Path], cache_max_bytes: int | None = None) -> dict:
    """Arguments shared by `main` and the tests: upload caps and cache bound, served folders, look.

    show_error is off: a visitor sees the app's own one-sentence gr.Error messages only, never the
    text of Gradio's exceptions, which name server paths ("Cannot move /… to the gradio cache dir").
    """
    from starlette.middleware import Middleware

    guard = Middleware(UploadCacheGuard, max_request_bytes=MAX_FILE_SIZE + 64 * 1024,  # + multipart framing
                       max_bytes=CACHE_MAX_BYTES if cache_max_bytes is None else cache_max_bytes)
    return {"show_error": False, "max_file_size": MAX_FILE_SIZE, "allowed_paths": [str(p) for p in allowed],
            "app_kwargs": {"middleware": [guard]},
            "theme": gr.themes.Soft(primary_hue="indigo", neutral_hue="slate"), "css": CSS,
            "footer_links": ["api"]}


def default_store_dir(source: str) -> Path:
    """A writable per-source folder for uploads, outside the repo: $DTREC_STORE_DIR or ~/.cache/dtrec/store/<hash>."""
    if os.environ.get("DTREC_STORE_DIR"):
        return Path(os.environ["DTREC_STORE_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dtrec" / "store" / hashlib.sha256(source.encode()).hexdigest()[:12]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags of the demo."""
    p = argparse.ArgumentParser(description="dtrec Gradio demo")
    p.add_argument("--demo", default=os.environ.get("DTREC_DEMO", str(DEFAULT_DEMO)),
                   help="demo folder or Hub repo id written by `dtrec build-demo` (default: assets/demo; env DTREC_DEMO)")
    p.add_argument("--model", default=os.environ.get("DTREC_MODEL"),
                   help="model folder or Hub repo id, overriding the demo folder's model (env DTREC_MODEL)")
    p.add_argument("--catalog", default=os.environ.get("DTREC_CATALOG"),
                   help="catalog folder (items.parquet, images/, features/), overriding the demo's (env DTREC_CATALOG)")
    p.add_argument("--store-dir", default=None,
                   help="writable folder for the item store and uploads (default: ~/.cache/dtrec/store/<hash>)")
    p.add_argument("--index", default=os.environ.get("DTREC_INDEX", "flat"), choices=["flat", "hnsw", "ivfpq"],
                   help="nearest-neighbour index: flat (exact, default), hnsw, or ivfpq (from 10,000 items; "
                        "re-ranked with 8-bit vectors) (env DTREC_INDEX)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="open a public gradio.live link (off by default)")
    return p.parse_args(argv)


def load_recommender(demo: str | None, model: str | None, catalog: str | None,
                     store_dir: str | None, index: str = "flat") -> tuple[Any, list[Path]]:
    """The Recommender the flags name, and the folders whose images the app may serve."""
    from dtrec.config import ServeConfig
    from dtrec.hub import resolve_demo, resolve_model
    from dtrec.service import Recommender

    demo_dir = resolve_demo(demo) if demo and not (model and catalog) else None
    model_dir = resolve_model(model) if model else demo_dir / "model"
    catalog_dir = Path(catalog).resolve() if catalog else demo_dir / "catalog"
    store = Path(store_dir) if store_dir else default_store_dir(f"{model_dir}|{catalog_dir}")
    cfg = ServeConfig(model=str(model_dir), catalog=str(catalog_dir), store_dir=str(store), index=index)
    rec = Recommender(cfg, demo_dir=demo_dir)
    # Only the catalog's and the store's images are served; never the store's database.
    return rec, [catalog_dir / "images", store / "images"]


def _warm_up(rec: Any) -> None:
    try:
        rec.warm_up()  # requests that need the encoder meanwhile wait for it (Recommender._encoder_obj)
    except Exception:  # logged; the first upload or search tries again and answers for itself
        log.warning("encoder warm-up failed", exc_info=True)


def configure_logging() -> None:
    """The app's log: its own lines at INFO; libraries' routine chatter that reads like an error, off."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # FAISS tries its AVX-512 and AVX2 builds first and logs each miss at INFO ("Could not load
    # library with AVX512 support") before loading the build that works: harmless, but it alarms.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Load the Recommender named by the flags and serve the app."""
    configure_logging()
    args = parse_args(argv)
    t0 = _T0 if __name__ == "__main__" else time.perf_counter()
    if not args.catalog and Path(args.demo) == DEFAULT_DEMO and not (DEFAULT_DEMO / "model").is_dir():
        print(f"No demo at {DEFAULT_DEMO}: run `dtrec build-demo` to make it (or pass --demo, or --model and --catalog).",
              file=sys.stderr)
        return 2
    try:
        rec, served = load_recommender(args.demo, args.model, args.catalog, args.store_dir, args.index)
    except (ValueError, FileNotFoundError) as e:
        print(f"dtrec demo: {e}", file=sys.stderr)
        return 2
    demo = build_app(rec)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                **launch_kwargs([*served, PLACEHOLDER]))
    log.info("dtrec demo ready in %.1f s at http://%s:%d", time.perf_counter() - t0, args.host, args.port)
    # The frozen encoder loads on first use (seconds); load it now so the first search or upload is quick.
    threading.Thread(target=_warm_up, args=(rec,), daemon=True).start()
    try:
        demo.block_thread()
    finally:
        rec.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
