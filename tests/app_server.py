"""The tests' one way to serve app.py's UI in their own process, on a free loopback port."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(rec: Any, demo_dir: str | Path, store: str | Path, **launch_kwargs: Any) -> tuple[str, Any]:
    """app.py's UI and API over `rec` (its catalog from `demo_dir`, uploads in `store`): (url, demo).

    The server runs in a thread of this process until `demo.close()`; `launch_kwargs` go to
    `app.launch_kwargs` (e.g. `cache_max_bytes`)."""
    import app  # the repository root is on pytest's pythonpath (pyproject.toml)

    demo = app.build_app(rec)
    port = free_port()
    folders = [Path(demo_dir) / "catalog" / "images", Path(store) / "images", app.PLACEHOLDER]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_kwargs(folders, **launch_kwargs))
    return f"http://127.0.0.1:{port}/", demo
