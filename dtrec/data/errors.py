"""The error every data reader raises for malformed input."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """Malformed or missing input data; the message names the file (and line when known)."""

    def __init__(self, file: str | Path, message: str, line: int | None = None):
        self.file = str(file)
        self.line = line
        where = Path(file).name if line is None else f"{Path(file).name} line {line}"
        super().__init__(f"{where}: {message}")


def require_file(path: str | Path) -> Path:
    """`path` as a Path, or DataFormatError when it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(p, f"file not found ({p})")
    return p
