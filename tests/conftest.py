"""Shared test set-up: offline Hugging Face Hub, paths to fixtures and real data."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never touch the network: set before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

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
