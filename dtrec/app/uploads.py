"""Gradio's upload cache, where the files clients send land: at most MAX_FILE_SIZE a request, the cache
trimmed to a byte bound (oldest first) after every upload and swept of files older than an hour; a file
the app refuses, and every /add_item file once handled, is deleted at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import anyio.to_thread
from gradio.utils import get_upload_folder
from starlette.responses import PlainTextResponse

from dtrec.app.events import BadInput

# A poster is well under 5 MB; the cache keeps what visitors are about to add, not an archive.
MAX_FILE_SIZE = 5 * 1024 * 1024
CACHE_MAX_BYTES = int(float(os.environ.get("DTREC_UPLOAD_CACHE_MB", "100")) * 1024 * 1024)
DELETE_CACHE = (600, 3600)  # every 10 minutes, delete cached files older than an hour


def upload_folder() -> Path:
    """Gradio's upload cache ($GRADIO_TEMP_DIR, else <tmp>/gradio): where client files land."""
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
            msg = f"The upload is larger than {MAX_FILE_SIZE // (1024 * 1024)} MB, the most a poster may be."
            await PlainTextResponse(msg, status_code=413)(scope, receive, send)
            return
        blocks = getattr(scope.get("app"), "get_blocks", lambda: None)()
        if blocks is None or not path.endswith("/upload"):
            await self.app(scope, receive, send)
            return

        async def send_after_trim(message: dict) -> None:
            if message.get("type") == "http.response.start":  # the bound holds by the time the client hears back
                await anyio.to_thread.run_sync(trim_upload_cache, blocks, self.max_bytes)
            await send(message)

        await self.app(scope, receive, send_after_trim)
        # again for files Gradio moves into place after answering (when its temp folder is on another disk)
        await anyio.to_thread.run_sync(trim_upload_cache, blocks, self.max_bytes)
