"""Preprocessing shared by every reader: iterated k-core, short-user filter,
truncation, and the cold-start item split.

Leave-one-out itself lives in `Dataset.eval_cases` / `Dataset.train_sequences`
(the last item of each history is the test target, the second-to-last the
validation target, the rest is training data).
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Sequence

import numpy as np

from dtrec.data.catalog import Catalog, Dataset, Interactions

MIN_SEQUENCE_LENGTH = 3  # one training item, one validation target, one test target


def kcore(users: Sequence[Hashable], items: Sequence[Hashable], k: int) -> np.ndarray:
    """Mask of the events kept by the iterated k-core: every kept user and item has >= k kept events."""
    n = len(users)
    if len(items) != n:
        raise ValueError("users and items differ in length")
    keep = np.ones(n, dtype=bool)
    if k <= 1 or n == 0:
        return keep
    users = list(users)
    items = list(items)
    # Removing a user can push an item under k and vice versa, so repeat until nothing changes.
    while True:
        idx = np.flatnonzero(keep)
        uc = Counter(users[i] for i in idx)
        ic = Counter(items[i] for i in idx)
        drop = [i for i in idx if uc[users[i]] < k or ic[items[i]] < k]
        if not drop:
            return keep
        keep[drop] = False


def drop_short(interactions: Interactions, min_len: int = MIN_SEQUENCE_LENGTH) -> Interactions:
    """The users whose history has at least `min_len` items (shorter ones cannot be split)."""
    keep = [i for i, s in enumerate(interactions.sequences) if len(s) >= min_len]
    ts = interactions.timestamps
    return Interactions([interactions.users[i] for i in keep], [list(interactions.sequences[i]) for i in keep],
                        [list(ts[i]) for i in keep] if ts is not None else None)


def compact(catalog: Catalog, interactions: Interactions, keep_unused: bool = False) -> tuple[Catalog, Interactions]:
    """Renumber items densely in catalog order, dropping items no history uses unless `keep_unused`."""
    used = set()
    for s in interactions.sequences:
        used.update(s)
    kept = [i for i in range(len(catalog)) if keep_unused or i in used]
    remap = {old: new for new, old in enumerate(kept)}
    cat = Catalog([catalog[i] for i in kept], root=catalog.root)
    seqs = [[remap[i] for i in s] for s in interactions.sequences]
    return cat, Interactions(list(interactions.users), seqs, interactions.timestamps)


def cold_start_split(dataset: Dataset, fraction: float, seed: int = 42) -> list[int]:
    """Choose `fraction` of the catalog's items to hold out of all training data (sorted indices).

    Candidates are the items that are some user's *test* target, so every cold
    item yields at least one cold test case; `Dataset.train_sequences()` then
    drops them from every training history. The count is `round(fraction * N)`,
    capped at the number of distinct test targets.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"cold fraction must be in [0, 1), not {fraction}")
    if fraction == 0.0:
        return []
    targets = sorted({s[-1] for s in dataset.interactions.sequences if len(s) >= 2})
    n = min(len(targets), max(1, round(fraction * len(dataset.catalog))))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.asarray(targets, dtype=np.int64), size=n, replace=False)
    return sorted(int(i) for i in chosen)
