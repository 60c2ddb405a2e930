"""`dtrec.fastimport`: Gradio imported without rewriting its type stubs, and still working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import sys
from dtrec.fastimport import skip_gradio_stub_writing
assert skip_gradio_stub_writing() is True
import gradio as gr
import gradio.blocks_events as be
import gradio.component_meta as cm
assert cm.create_or_modify_pyi.__name__ == "_no_stub", cm.create_or_modify_pyi
assert be.create_or_modify_pyi is cm.create_or_modify_pyi
assert not any(type(f).__name__ == "_StubSkipper" for f in sys.meta_path), "the hook removes itself"
with gr.Blocks() as demo:  # components and their events are defined as usual
    box = gr.Textbox()
    out = gr.Textbox()
    box.submit(lambda s: s, box, out)
assert demo.fns, "the event was wired"
assert skip_gradio_stub_writing() is False  # too late once Gradio is imported
print("ok")
"""


def test_gradio_imports_without_its_stub_writer_and_builds_an_app():
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_nothing_is_hooked_once_gradio_is_imported(monkeypatch):
    import dtrec.fastimport as fastimport

    monkeypatch.setitem(sys.modules, "gradio.component_meta", sys.modules.get("gradio.component_meta") or object())
    before = list(sys.meta_path)
    assert fastimport.skip_gradio_stub_writing() is False
    assert sys.meta_path == before
