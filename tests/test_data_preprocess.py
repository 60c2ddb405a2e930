"""k-core, short-user filter, truncation, leave-one-out and the cold-start split on hand-made cases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.data.preprocess import compact, cold_start_split, drop_short, kcore


def _dataset(seqs: list[list[int]], n_items: int | None = None) -> Dataset:
    n = n_items if n_items is not None else max(max(s) for s in seqs) + 1
    cat = Catalog([Item(id=f"i{i}", title=f"item {i}", text="") for i in range(n)])
    return Dataset(cat, Interactions([f"u{u}" for u in range(len(seqs))], [list(s) for s in seqs]))


def test_kcore_keeps_a_core_and_empties_a_sparse_graph():
    events = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "z"), ("c", "y"), ("d", "x"), ("d", "y")]
    users, items = zip(*events)
    assert kcore(users, items, 2).all()  # every user and item already has >= 2 events
    assert not kcore(users, items, 3).any()  # item z has 2 events; dropping it cascades to everything


def test_kcore_cascade_removes_dependent_user():
    # Item q appears twice (< 3): dropping it leaves user v with 2 events (< 3), which then drops v's other items.
    events = [("u", "a"), ("u", "b"), ("u", "c"), ("v", "a"), ("v", "q"), ("v", "b"), ("w", "a"), ("w", "b"),
              ("w", "c"), ("x", "a"), ("x", "b"), ("x", "c"), ("y", "q")]
    users, items = zip(*events)
    kept = [e for e, k in zip(events, kcore(users, items, 3)) if k]
    assert ("v", "a") not in kept and ("v", "b") not in kept
    assert {u for u, _ in kept} == {"u", "w", "x"}
    uc, ic = Counter(u for u, _ in kept), Counter(i for _, i in kept)
    assert min(uc.values()) >= 3 and min(ic.values()) >= 3


def _reference_kcore(events: list[tuple[int, int]], k: int) -> set[tuple[int, int]]:
    """Peel one under-k user or item at a time (a different order than `kcore`); the k-core is unique."""
    live = set(range(len(events)))
    while True:
        uc = Counter(events[e][0] for e in live)
        ic = Counter(events[e][1] for e in live)
        bad = next((e for e in sorted(live) if uc[events[e][0]] < k or ic[events[e][1]] < k), None)
        if bad is None:
            return {events[e] + (e,) for e in live}
        u = events[bad][0] if uc[events[bad][0]] < k else None
        live = {e for e in live if (events[e][0] != u if u is not None else events[e][1] != events[bad][1])}


def test_kcore_matches_reference_on_random_events():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 40, 600).tolist()
    items = rng.integers(0, 60, 600).tolist()
    assert kcore(users, items, 0).all()
    keep = kcore(users, items, 8)
    got = {(u, i, e) for e, (u, i, k) in enumerate(zip(users, items, keep)) if k}
    assert got == _reference_kcore(list(zip(users, items)), 8)
    assert 0 < len(got) < 600


def test_drop_short_and_compact():
    inter = Interactions(["a", "b", "c"], [[0, 1, 2], [3, 4], [5, 0, 1, 5]], [[1, 2, 3], [1, 2], [1, 2, 3, 4]])
    kept = drop_short(inter, 3)
    assert kept.users == ["a", "c"] and kept.timestamps == [[1, 2, 3], [1, 2, 3, 4]]
    cat = Catalog([Item(id=str(i), title=str(i), text="") for i in range(6)])
    cat2, inter2 = compact(cat, kept)
    assert [it.id for it in cat2] == ["0", "1", "2", "5"]
    assert inter2.sequences == [[0, 1, 2], [3, 0, 1, 3]]
    assert len(compact(cat, kept, keep_unused=True)[0]) == 6


def test_leave_one_out():
    ds = _dataset([[0, 1, 2, 3, 4], [5, 6, 7]])
    assert ds.eval_cases("test") == [([0, 1, 2, 3], 4), ([5, 6], 7)]
    assert ds.eval_cases("valid") == [([0, 1, 2], 3), ([5], 6)]
    assert ds.train_sequences() == [[0, 1, 2], [5]]
    with pytest.raises(ValueError):
        ds.eval_cases("train")


def test_cold_split_never_leaks_and_targets_test_cases():
    rng = np.random.default_rng(1)
    seqs = [rng.choice(50, rng.integers(4, 12), replace=False).tolist() for _ in range(80)]
    ds = _dataset(seqs, 50)
    cold = cold_start_split(ds, 0.1, seed=3)
    assert len(cold) == 5 and cold == sorted(set(cold))
    assert cold == cold_start_split(ds, 0.1, seed=3)
    assert cold != cold_start_split(ds, 0.1, seed=4)
    ds.cold_items = cold
    test_targets = {s[-1] for s in seqs}
    assert set(cold) <= test_targets
    for s in ds.train_sequences():
        assert not set(s) & set(cold)
    assert not set(ds.training_items()) & set(cold)
    cases = ds.cold_cases("test")
    assert len(cases) >= len(cold) and all(t in cold for _, t in cases)
    assert cold_start_split(ds, 0.0) == []
    with pytest.raises(ValueError):
        cold_start_split(ds, 1.0)
