"""Shared test set-up: offline Hugging Face Hub, paths to fixtures and real data, the app on a local port."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# Tests never touch the network: set before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
from app_server import launch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Small committed fixtures."""
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets (../shared/data or $DTREC_DATA); skips when absent."""
    path = Path(os.environ.get("DTREC_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set DTREC_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A demo folder written by `dtrec.demo.build_demo` from the MovieLens fixture (tiny-clip, random DualTower).

    Shared by the session: tests must not write into it (give the Recommender its own store_dir).
    """
    from tiny_demo import make_tiny_demo

    return make_tiny_demo(tmp_path_factory.mktemp("tiny-demo"))


@pytest.fixture(scope="session")
def synthetic_demo(tmp_path_factory) -> dict:
    """A demo folder over 40 synthetic items (`tests/synthetic.py`): {"dir", "dataset", "features"}.

    Shared by the session: tests must not write into it (give the Recommender its own store_dir).
    """
    from synthetic import write_synthetic_demo

    return write_synthetic_demo(tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("demo"))


@dataclass
class ServedApp:
    """What the `served_app` fixture launched: its URL, the Recommender behind it, the Gradio Blocks, the store."""

    url: str
    rec: Any
    demo: Any
    store: Path


@pytest.fixture(scope="module")
def served_app(tiny_demo, tmp_path_factory, request) -> Iterator[ServedApp]:
    """dtrec.app's UI over the tiny demo with its own store, launched once per test module on a free loopback port.

    A module sets the Recommender's `ServeConfig` fields with a module-level `SERVE_CONFIG` dict."""
    from dtrec.config import ServeConfig
    from dtrec.service import Recommender

    store = tmp_path_factory.mktemp("app-store")
    rec = Recommender.from_folder(tiny_demo, store_dir=store,
                                  config=ServeConfig(**getattr(request.module, "SERVE_CONFIG", {})))
    try:
        url, demo = launch(rec, tiny_demo, store)
        try:
            yield ServedApp(url, rec, demo, store)
        finally:
            demo.close()
    finally:
        rec.close()
