"""Full-ranking evaluation: every item of the catalog is a candidate, no sampled negatives.

The protocol is DESIGN.md's "Evaluation protocol": leave-one-out cases from
`Dataset.eval_cases` / `cold_cases`, Recall@k, NDCG@k and MRR averaged over cases,
ties broken pessimistically so that a constant scorer earns nothing.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

ScoreFn = Callable[[list[list[int]]], torch.Tensor]
Case = tuple[Sequence[int], int]

METRIC_KEYS = ("recall@10", "recall@50", "ndcg@10", "ndcg@50", "mrr")


def metric_keys(ks: Sequence[int] = (10, 50)) -> list[str]:
    """Names of the metrics `rank_metrics` returns for cutoffs `ks`, in report order."""
    return [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target: items scoring higher plus other items tying with it."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (batch, items), got shape {tuple(scores.shape)}")
    targets = targets.to(device=scores.device, dtype=torch.long).view(-1)
    if targets.numel() != scores.shape[0]:
        raise ValueError(f"{targets.numel()} targets for {scores.shape[0]} score rows")
    n = scores.shape[1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n):
        raise ValueError(f"a target index lies outside 0..{n - 1}")
    # NaN must never outrank a real score, so it becomes the lowest possible value;
    # a NaN target then ties with every other NaN and ranks below all of them.
    s = torch.nan_to_num(scores.float(), nan=float("-inf"))
    t = s.gather(1, targets.view(-1, 1))
    higher = (s > t).sum(1)
    ties = (s == t).sum(1) - 1  # the target ties with itself
    return higher + ties


def rank_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (10, 50)) -> dict[str, torch.Tensor]:
    """Per-case recall@k, ndcg@k (k in `ks`) and mrr for full-ranking `scores` (B, N)."""
    rank = target_ranks(scores, targets).double()
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        out[f"recall@{k}"] = (rank < k).double()
    for k in ks:
        out[f"ndcg@{k}"] = torch.where(rank < k, 1.0 / torch.log2(rank + 2.0), torch.zeros_like(rank))
    out["mrr"] = 1.0 / (rank + 1.0)
    return out


def evaluate(
    score_fn: ScoreFn,
    cases: Iterable[Case],
    batch_size: int = 256,
    ks: Sequence[int] = (10, 50),
    exclude_history: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Mean full-ranking metrics of `score_fn(histories) -> (B, N)` over `(history, target)` cases.

    Users are scored `batch_size` at a time, so memory stays at batch_size x N.
    With `exclude_history`, items already in a history are scored as worst
    (a repeat target then ranks last, as it would in a recommender that hides seen items).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cases = list(cases)
    keys = metric_keys(ks)
    sums = {k: 0.0 for k in keys}
    batches = range(0, len(cases), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="evaluate", unit="batch")
    for start in batches:
        chunk = cases[start : start + batch_size]
        histories = [list(map(int, h)) for h, _ in chunk]
        targets = torch.tensor([int(t) for _, t in chunk], dtype=torch.long)
        with torch.no_grad():
            scores = score_fn(histories)
        if not isinstance(scores, torch.Tensor):
            scores = torch.as_tensor(scores)
        if scores.shape[0] != len(chunk):
            raise ValueError(f"score_fn returned {scores.shape[0]} rows for {len(chunk)} histories")
        if exclude_history:
            scores = scores.float().clone()
            rows = [b for b, h in enumerate(histories) for _ in h]
            cols = [i for h in histories for i in h]
            if cols:
                scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
        m = rank_metrics(scores, targets, ks)
        for k in keys:
            sums[k] += float(m[k].sum())
    n = len(cases)
    result = {k: (sums[k] / n if n else math.nan) for k in keys}
    result["n"] = n
    return result
