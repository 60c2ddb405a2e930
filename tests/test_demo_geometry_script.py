"""scripts/demo_geometry.py: is a one-movie list like the movie, or the popularity list?"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the script imports its neighbour item_content
spec = importlib.util.spec_from_file_location("demo_geometry", ROOT / "scripts" / "demo_geometry.py")
demo_geometry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_geometry)


def test_list_agreement_counts_shared_genres_and_popular_items_per_list():
    genres = [{"a"}, {"a", "b"}, {"b"}, {"c"}, {"a"}]
    lists = torch.tensor([[1, 2], [3, 4]])  # query 0: one of two shares "a"; query 2: none shares "b"
    out = demo_geometry.list_agreement(lists, [0, 2], genres, popular={3, 4})
    assert out["genre_share"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["popular_share"] == pytest.approx((0.0 + 1.0) / 2)


def test_top_hides_the_query_and_the_popularity_ranks_put_unseen_items_last():
    ranks = demo_geometry._ranks([2, 0], 4)
    assert ranks == [1, 4, 0, 4]
    scores = -torch.tensor(ranks, dtype=torch.float).repeat(2, 1)
    top = demo_geometry._top(scores, [2, 1], k=2)
    assert top[0, 0] == 0 and int(top[0, 1]) in (1, 3)  # item 2 is the query: the next most popular, then an unseen one
    assert top[1].tolist() == [2, 0]
