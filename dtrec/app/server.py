"""Serving the app: the Recommender the options name, Gradio's launch settings, the process's log."""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from dtrec.app.ui import CSS, build_app
from dtrec.app.uploads import CACHE_MAX_BYTES, MAX_FILE_SIZE, UploadCacheGuard
from dtrec.app.views import PLACEHOLDER
from dtrec.config import ServeConfig
from dtrec.hub import resolve_demo, resolve_model
from dtrec.service import Recommender
from dtrec.serving.sync import default_store_dir

log = logging.getLogger("dtrec.app")

# Where `dtrec build-demo` writes by default, relative to the working directory (a checkout's root
# holds the embedded demo there).
DEFAULT_DEMO = Path("assets") / "demo"


@dataclass
class AppOptions:
    """What `dtrec serve` serves and where: a demo folder (or Hub id), or a model and a catalog overriding it."""

    demo: str | None = None
    model: str | None = None
    catalog: str | None = None
    store_dir: str | None = None
    index: str = "flat"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False


def launch_kwargs(allowed: list[str | Path], cache_max_bytes: int | None = None) -> dict:
    """Arguments of `demo.launch` shared by `serve` and the tests: upload caps and cache bound, served folders, look.

    show_error is off: a visitor sees the app's own one-sentence gr.Error messages only, never the
    text of Gradio's exceptions, which name server paths ("Cannot move /… to the gradio cache dir").
    """
    guard = Middleware(UploadCacheGuard, max_request_bytes=MAX_FILE_SIZE + 64 * 1024,  # + multipart framing
                       max_bytes=CACHE_MAX_BYTES if cache_max_bytes is None else cache_max_bytes)
    return {"show_error": False, "max_file_size": MAX_FILE_SIZE, "allowed_paths": [str(p) for p in allowed],
            "app_kwargs": {"middleware": [guard]},
            "theme": gr.themes.Soft(primary_hue="indigo", neutral_hue="slate"), "css": CSS,
            "footer_links": ["api"]}


def load_recommender(demo: str | None, model: str | None, catalog: str | None,
                     store_dir: str | None, index: str = "flat") -> tuple[Recommender, list[Path]]:
    """The Recommender the options name, and the folders whose images the app may serve."""
    demo_dir = resolve_demo(demo) if demo and not (model and catalog) else None
    model_dir = resolve_model(model) if model else demo_dir / "model"
    catalog_dir = Path(catalog).resolve() if catalog else demo_dir / "catalog"
    store = Path(store_dir) if store_dir else default_store_dir(model_dir, catalog_dir)
    cfg = ServeConfig(model=str(model_dir), catalog=str(catalog_dir), store_dir=str(store), index=index)
    rec = Recommender(cfg, demo_dir=demo_dir)
    # Only the catalog's and the store's images are served; never the store's database.
    return rec, [catalog_dir / "images", store / "images"]


def configure_logging() -> None:
    """The app's log: its own lines at INFO; libraries' routine chatter that reads like an error, off."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # FAISS tries its AVX-512 and AVX2 builds first and logs each miss at INFO ("Could not load
    # library with AVX512 support") before loading the build that works: harmless, but it alarms.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def _missing_demo(demo: str | None) -> Path | None:
    """The local demo folder `demo` names when it is absent (a Hub repo id is not local)."""
    path = Path(demo).expanduser() if demo else DEFAULT_DEMO
    if (path == DEFAULT_DEMO or path.is_absolute()) and not (path / "model").is_dir():
        return path
    return None


def _warm_up(rec: Recommender) -> None:
    try:
        rec.warm_up()  # requests that need the encoder meanwhile wait for it (ContentEncoder.get)
    except Exception:  # logged; the first upload or search tries again and answers for itself
        log.warning("encoder warm-up failed", exc_info=True)


def serve(options: AppOptions, *, started: float | None = None) -> int:
    """Load the Recommender the options name and serve the app until interrupted; 2 when it cannot start."""
    configure_logging()
    t0 = time.perf_counter() if started is None else started
    missing = None if options.catalog else _missing_demo(options.demo)
    if missing is not None:
        print(f"No demo at {missing}: run `dtrec build-demo` to make it (or pass --demo, or --model and --catalog).",
              file=sys.stderr)
        return 2
    try:
        rec, served = load_recommender(options.demo or str(DEFAULT_DEMO), options.model, options.catalog,
                                       options.store_dir, options.index)
    except (ValueError, FileNotFoundError) as e:
        print(f"dtrec demo: {e}", file=sys.stderr)
        return 2
    demo = build_app(rec)
    demo.launch(server_name=options.host, server_port=options.port, share=options.share, prevent_thread_lock=True,
                **launch_kwargs([*served, PLACEHOLDER]))
    log.info("dtrec demo ready in %.1f s at http://%s:%d", time.perf_counter() - t0, options.host, options.port)
    # The frozen encoder loads on first use (seconds); load it now so the first search or upload is quick.
    threading.Thread(target=_warm_up, args=(rec,), daemon=True).start()
    try:
        demo.block_thread()
    finally:
        rec.close()
    return 0
