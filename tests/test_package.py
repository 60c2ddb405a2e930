"""The installed package stands alone: it imports nothing from the checkout around it and reads no path in it;
its modules import each other without a cycle, and at function level only where a reason is written down."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dtrec"
# Top-level modules of the checkout that an installed dtrec does not have.
CHECKOUT_ONLY = {"app", "benchmarks", "tests", "scripts", "conftest"}
# No module reads a path above the package: `dtrec serve` imports the UI (dtrec.app), no app.py.
PATH_READS_ALLOWED: dict[str, int] = {}


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
    site = repo / ".venv" / "site-packages" / "dtrec"
    site.mkdir(parents=True)
    copy = site / "provenance.py"
    shutil.copyfile(PACKAGE / "provenance.py", copy)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "README").write_text("another project\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "theirs"], check=True)
    spec = importlib.util.spec_from_file_location("installed_provenance", copy)
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.git_commit() is None
    # the checkout's own copy, tracked by git, knows its commit; a folder given explicitly is asked directly
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert installed.git_commit(repo) == head


# --------------------------------------------------------------------------- imports between dtrec's modules
# Third-party libraries that take a second or more to import.
HEAVY = {"torch", "pandas", "faiss", "huggingface_hub", "transformers", "open_clip", "safetensors", "gradio"}
# Function-level imports of dtrec modules: importer -> (the modules it imports inside functions, why).
FUNCTION_LEVEL_IMPORTS = {
    "dtrec.cli": (
        {"dtrec.app", "dtrec.baselines", "dtrec.data.catalog", "dtrec.data.prepare", "dtrec.demo", "dtrec.features",
         "dtrec.hub", "dtrec.scoring", "dtrec.train.adapt", "dtrec.train.checkpoint", "dtrec.train.finetune",
         "dtrec.train.pretrain"},
        "each sub-command imports its library module when it runs: `dtrec --help` need not import torch, "
        "pandas, FAISS, huggingface_hub or gradio (checked below: every one of these is heavy, cli itself is not)"),
    "dtrec.weights": (
        {"dtrec.encoders.registry"},
        "the CLI imports it at start-up; `default_init` needs the encoder registry, whose package imports every "
        "encoder, only when a fine-tuning starts"),
}


def _name(path: Path) -> str:
    parts = ["dtrec", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements run on import: the top level, into if/try blocks, not into `if TYPE_CHECKING:`."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop(0)
        if _is_type_checking(node):
            continue
        out.append(node)
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [n for field in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, field, [])]
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    return out


def _named(node: ast.stmt) -> list[tuple[str, bool]]:
    """(dtrec module named by an import statement, whether it is a submodule taken by `from ... import`)."""
    if isinstance(node, ast.Import):
        return [(a.name, False) for a in node.names if a.name.startswith("dtrec")]
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dtrec"):
        assert not node.level, "dtrec's modules import each other by absolute name"
        return [(f"{node.module}.{a.name}", True) if f"{node.module}.{a.name}" in MODULES else (node.module, False)
                for a in node.names]
    return []


def _targets(importer: str, node: ast.stmt) -> set[str]:
    """The dtrec modules whose import `node` runs (packages on the way included, the importer's own excepted)."""
    out = set()
    for full, is_submodule in _named(node):
        parts = full.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            ancestor = importer == name or importer.startswith(name + ".")
            # An ancestor package is in sys.modules before the importer runs, so importing through it runs
            # nothing, but taking a name from it needs its __init__ finished: that is a dependency.
            if name in MODULES and (not ancestor or (i == len(parts) and not is_submodule and name != importer)):
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set().union(*(_targets(name, n) for n in _module_level(tree))) - {name}
    return graph


def _function_level() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    targets = {m for m, _ in _named(node) if m != name} if isinstance(node, ast.stmt) else set()
                    if targets:
                        found.setdefault(name, set()).update(targets)
    return found


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    return seen


def _heavy(name: str, graph: dict[str, set[str]]) -> bool:
    """Whether importing `name` imports a heavy third-party library (through any dtrec module it imports)."""
    for m in _closure(graph, name):
        tree = ast.parse(MODULES[m].read_text())
        for node in _module_level(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] in HEAVY for n in names):
                return True
    return False


def test_module_level_imports_have_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [m, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_cycle_check_sees_cycles_through_a_package_init():
    # a submodule taking a name from its own package, while that package's __init__ imports it
    assert "dtrec.model" in _targets("dtrec.model.fusion", ast.parse("from dtrec.model import DualTower").body[0])
    assert "dtrec.model" not in _targets("dtrec.model.fusion", ast.parse("from dtrec.model.dropout import D").body[0])
    assert "dtrec.encoders" in _targets("dtrec.model.tower", ast.parse("from dtrec.encoders.base import E").body[0])


def test_function_level_imports_of_dtrec_modules_are_the_listed_ones():
    found = _function_level()
    assert found == {m: targets for m, (targets, _) in FUNCTION_LEVEL_IMPORTS.items()}, (
        "a function-level import of a dtrec module needs a reason in FUNCTION_LEVEL_IMPORTS (or a module-level import)")


def test_the_cli_imports_lazily_only_what_is_heavy():
    graph = _graph()
    assert not _heavy("dtrec.cli", graph)
    light = sorted(m for m in FUNCTION_LEVEL_IMPORTS["dtrec.cli"][0] if not _heavy(m, graph))
    assert not light, f"import {light} at the top of cli.py: they are light"


def test_only_the_serve_command_imports_the_ui():
    """dtrec.app may import any dtrec module; of the others only cli.py imports it, in its `serve` handler."""
    graph = _graph()
    ui = {m for m in MODULES if m == "dtrec.app" or m.startswith("dtrec.app.")}
    importers = {m for m, deps in graph.items() if deps & ui} - ui
    assert not importers, f"{sorted(importers)} import dtrec.app at module level"
    lazy = {m for m, deps in _function_level().items() if deps & ui} - ui
    assert lazy == {"dtrec.cli"}
    cli = ast.parse(MODULES["dtrec.cli"].read_text())
    handlers = {fn.name for fn in ast.walk(cli) if isinstance(fn, ast.FunctionDef)
                and any(ui & {m for m, _ in _named(n)} for n in ast.walk(fn) if isinstance(n, ast.stmt))}
    assert handlers == {"_cmd_serve"}


def test_registries_import_no_module_that_registers_into_them():
    graph = _graph()
    assert _closure(graph, "dtrec.encoders.registry") == {"dtrec.encoders.registry", "dtrec.encoders.base"}
    assert _closure(graph, "dtrec.data.registry") == {"dtrec.data.registry", "dtrec.registry"}
    assert not _heavy("dtrec.data.registry", graph)
    readers = {"dtrec.data.movielens", "dtrec.data.unisrec", "dtrec.data.jsonl"}
    assert all("dtrec.data.registry" in graph[m] for m in readers), "each reader registers itself"
    assert readers <= graph["dtrec.data.prepare"], "dtrec.data.prepare imports the built-in readers"
    assert _closure(graph, "dtrec.baselines.registry") == {"dtrec.baselines.registry", "dtrec.registry"}


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    r = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=PACKAGE.parent, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
