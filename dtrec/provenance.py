"""Where a result comes from: the git commit of the dtrec source (or of a given folder) and whether it is dirty.

The one place that asks git; run records (`train_config.json`), recipe results and
benchmark reports all record what it answers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(root: str | Path | None = None) -> str | None:
    """The git commit of the running dtrec source (or of `root`), or None when it is not a git checkout."""
    if root is None:
        # The package's own folder, and only when git tracks this file there: an installed copy
        # (say, in a virtual environment inside some other repository) has no commit of its own.
        root = Path(__file__).resolve().parent
        if _git(root, "ls-files", "--error-unmatch", Path(__file__).name) is None:
            return None
    return _git(Path(root), "rev-parse", "HEAD") or None


def git_dirty(root: str | Path) -> bool | None:
    """Whether the work tree at `root` has uncommitted changes to tracked files; None outside git."""
    status = _git(Path(root), "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def _git(cwd: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None
