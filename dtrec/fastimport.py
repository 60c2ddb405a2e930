"""A faster `import gradio` for the demo: skip the type-stub files Gradio rewrites on every import.

When Gradio defines each of its ~80 component classes, its metaclass calls
`gradio.component_meta.create_or_modify_pyi`, which reads the class's source file, parses it
with `ast` and rewrites the `.pyi` stub beside it in site-packages. The stubs exist for editors'
type hints; nothing reads them at run time. That work was half of `import gradio` here
(3.2 of 6.8 s; docs/performance.md), and it tries to write into the installed package on every
start. `skip_gradio_stub_writing()`, called before Gradio is first imported, replaces that
function with a no-op as soon as its module has run, before any component class is defined.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Sequence

_MODULE = "gradio.component_meta"
_FUNCTION = "create_or_modify_pyi"


def _no_stub(*args: Any, **kwargs: Any) -> None:
    """Stand-in for Gradio's stub writer: writes nothing."""
    return None


class _StubSkipper(importlib.abc.MetaPathFinder):
    """Finds `gradio.component_meta` as usual and swaps its stub writer out once the module has run."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        """The module's ordinary spec, its loader patched; None for every other module."""
        if fullname != _MODULE:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # one module, once
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            if callable(getattr(module, _FUNCTION, None)):  # a Gradio without it: nothing to skip
                setattr(module, _FUNCTION, _no_stub)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's own loader object
        return spec


def skip_gradio_stub_writing() -> bool:
    """Make the coming `import gradio` skip its type-stub rewriting; False when Gradio is already imported."""
    if _MODULE in sys.modules:
        return False
    if not any(isinstance(f, _StubSkipper) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubSkipper())
    return True
