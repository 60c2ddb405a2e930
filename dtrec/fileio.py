"""Crash-safe file writes shared by the index, the store and the feature cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes, *, tmp_prefix: str | None = None,
                       sync_dir: bool = False, fsync: bool = True) -> Path:
    """Write `data` to `path` through a fsynced temp file and a rename: readers see old or new, never half.

    `fsync=False` leaves durability to the caller (one `os.sync()` after many files costs far less than
    one fsync each); readers still never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=tmp_prefix or f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir and fsync:
        # The rename itself is durable only once the directory entry is on disk.
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path
