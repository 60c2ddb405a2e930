"""The installed package stands alone: it imports nothing from the checkout around it and reads no path in it."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dtrec"
# Top-level modules of the checkout that an installed dtrec does not have.
CHECKOUT_ONLY = {"app", "benchmarks", "tests", "scripts", "conftest"}
# `dtrec serve` still runs the repository's app.py (until the UI moves into the package).
PATH_READS_ALLOWED = {"cli.py": 1}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_of_the_package_imports_the_checkout():
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if n.split(".")[0] in CHECKOUT_ONLY]
    assert not found


def test_no_module_of_the_package_reads_a_path_of_the_checkout():
    # a path above the package's own folder is the checkout's (or site-packages' when installed)
    reads = {}
    for path in _sources():
        n = sum(path.read_text().count(f"parents[{i}]") for i in range(1, 5))
        if n:
            reads[str(path.relative_to(PACKAGE))] = n
    assert reads == PATH_READS_ALLOWED


def test_an_installed_copy_inside_another_repository_has_no_commit(tmp_path):
    """`train_config.json` records the commit of the dtrec source that trained, never the commit of a repository
    that happens to hold the virtual environment it is installed in."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "project"
    site = repo / ".venv" / "site-packages" / "dtrec" / "train"
    site.mkdir(parents=True)
    copy = site / "checkpoint.py"
    shutil.copyfile(PACKAGE / "train" / "checkpoint.py", copy)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "README").write_text("another project\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "theirs"], check=True)
    spec = importlib.util.spec_from_file_location("installed_checkpoint", copy)
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.git_commit() is None
    # the checkout's own copy, tracked by git, knows its commit; a folder given explicitly is asked directly
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert installed.git_commit(repo) == head
