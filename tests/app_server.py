"""The tests' ways to serve the app: `launch` runs dtrec.app's UI in this process on a free loopback port;
`start_server` runs a serving command (`python app.py`, `dtrec serve`) as a child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(rec: Any, demo_dir: str | Path, store: str | Path, **launch_kwargs: Any) -> tuple[str, Any]:
    """dtrec.app's UI and API over `rec` (its catalog from `demo_dir`, uploads in `store`): (url, demo).

    The server runs in a thread of this process until `demo.close()`; `launch_kwargs` go to
    `dtrec.app.launch_kwargs` (e.g. `cache_max_bytes`)."""
    from dtrec.app import PLACEHOLDER, build_app
    from dtrec.app import launch_kwargs as app_launch_kwargs

    demo = build_app(rec)
    port = free_port()
    folders = [Path(demo_dir) / "catalog" / "images", Path(store) / "images", PLACEHOLDER]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app_launch_kwargs(folders, **launch_kwargs))
    return f"http://127.0.0.1:{port}/", demo


def start_server(demo: Path, store: Path, log: Path, *, command: list[str] | None = None, cwd: Path = REPO,
                 pythonpath: Path = REPO, **env: str) -> tuple[subprocess.Popen, str]:
    """`command` (default `python app.py`) serving `demo` with `store` on a free loopback port, run in `cwd`
    with `pythonpath`; (process, url) once it answers."""
    port = free_port()
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                 "PYTHONPATH": str(pythonpath), **env}
    child_env.pop("SPACE_ID", None)  # a local run: uploads public, as the default says
    out = open(log, "ab")
    command = command or [sys.executable, str(REPO / "app.py")]
    proc = subprocess.Popen([*command, "--demo", str(demo), "--store-dir", str(store),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                            env=child_env, cwd=str(cwd), start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{command[-1]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"{command[-1]} did not answer within 120 s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (the app saves its index on the way out), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
