"""dtrec's demo: a Gradio UI and HTTP API over `dtrec.service.Recommender`, served by `dtrec serve`.

Only layout, event wiring and what the page shows live here; every answer comes from the
Recommender (see docs/architecture.md). No other dtrec module imports this package except the
`serve` command, at run time (Gradio takes seconds to import).

Named API endpoints (callable with `gradio_client` or plain HTTP):
  /recommend (history, k) -> list of items     history: JSON list or "id1, id2, ..."
  /search    (text, k)    -> list of items
  /add_item  (image, title, text) -> {"id", "latency_ms", "is_new"}

Modules: `ui` (the page, its handlers and the endpoints), `events` (the error boundary and the
browser session of each event), `uploads` (Gradio's bounded upload cache), `views` (captions, JSON
rows, request parsing, the "About" tables), `server` (options, launch settings, `serve`).
"""

import os

from dtrec.fastimport import skip_gradio_stub_writing

# A local demo sends no usage statistics unless the user opts in: set before Gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Every module of this package imports Gradio and runs after these lines, whichever way in (`dtrec serve`,
# app.py, a test): Gradio is then imported without rewriting its type stubs (half its import time).
skip_gradio_stub_writing()

from dtrec.app.server import (DEFAULT_DEMO, AppOptions, configure_logging, launch_kwargs,  # noqa: E402
                              load_recommender, serve)
from dtrec.app.ui import ALL_GENRES, build_app  # noqa: E402
from dtrec.app.uploads import DELETE_CACHE, upload_folder  # noqa: E402
from dtrec.app.views import PLACEHOLDER  # noqa: E402

__all__ = ["ALL_GENRES", "DEFAULT_DEMO", "DELETE_CACHE", "PLACEHOLDER", "AppOptions", "build_app",
           "configure_logging", "launch_kwargs", "load_recommender", "serve", "upload_folder"]
