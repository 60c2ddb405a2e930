"""Full-ranking evaluation: every item of the catalog is a candidate, no sampled negatives.

The protocol is docs/design.md's "Evaluation protocol": leave-one-out cases from
`Dataset.eval_cases` / `cold_cases`, Recall@k, NDCG@k and MRR averaged over cases,
a target that ties with other items credited with the metric's expectation over a random order of the
tied items (`ties="expected"`, the default); `"pessimistic"` ranks it below all of them.
A checkpoint folder becomes a score function in `dtrec.scoring`, which also evaluates it whole.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

from dtrec.config import DEFAULT_TIES, TIES
from dtrec.results import metric_keys

ScoreFn = Callable[[list[list[int]]], torch.Tensor]
Case = tuple[Sequence[int], int]


def rank_counts(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(items scoring higher than each target, other items tying with it), both (B,) int64."""
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
    return (s > t).sum(1), (s == t).sum(1) - 1  # the target ties with itself


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target: items scoring higher plus other items tying with it."""
    higher, ties = rank_counts(scores, targets)
    return higher + ties


def ranked_first(scores: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether `items[b]` scores strictly above every other item of row b (NaN ranks lowest).

    The same answer as `target_ranks(scores, items) == 0` from one top-2 pass instead of two full
    comparisons: evaluation asks it of every batch.
    """
    items = items.to(device=scores.device, dtype=torch.long).view(-1)
    if scores.shape[1] < 2:
        return target_ranks(scores, items) == 0
    vals, idx = torch.topk(scores.float(), 2, dim=1)  # topk puts NaN first
    first = (idx[:, 0] == items) & (vals[:, 0] > vals[:, 1])
    nan = torch.isnan(vals).any(1)
    if bool(nan.any()):
        first[nan] = target_ranks(scores[nan], items[nan]) == 0
    return first


def rank_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (10, 50),
                 ties: str = DEFAULT_TIES) -> dict[str, torch.Tensor]:
    """Per-case recall@k, ndcg@k (k in `ks`) and mrr for full-ranking `scores` (B, N).

    `ties="pessimistic"`: a target ranks below every item it ties with (a constant scorer earns
    nothing). `"expected"`: the metric's expectation when ties are broken uniformly at random
    (the target's rank uniform over its tie group), i.e. fractional credit.
    """
    return metrics_from_counts(*rank_counts(scores, targets), ks=ks, ties=ties)


def metrics_from_counts(higher: torch.Tensor, tied: torch.Tensor, ks: Sequence[int] = (10, 50),
                        ties: str = DEFAULT_TIES) -> dict[str, torch.Tensor]:
    """`rank_metrics` from the counts of `rank_counts` (items above each target, items tied with it)."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, not {ties!r}")
    higher, tied = higher.double(), tied.double()
    out: dict[str, torch.Tensor] = {}
    if ties == "pessimistic":
        rank = higher + tied
        for k in ks:
            out[f"recall@{k}"] = (rank < k).double()
        for k in ks:
            out[f"ndcg@{k}"] = torch.where(rank < k, 1.0 / torch.log2(rank + 2.0), torch.zeros_like(rank))
        out["mrr"] = 1.0 / (rank + 1.0)
        return out
    size = tied + 1  # ranks higher .. higher + tied, each with probability 1 / size
    # An untied target gets the exact value (the sums below round: 1 - 1e-16 is not 1).
    exact = metrics_from_counts(higher, torch.zeros_like(tied), ks=ks, ties="pessimistic")
    untied = tied == 0
    for k in ks:
        out[f"recall@{k}"] = torch.minimum((k - higher).clamp(min=0.0), size) / size
    for k in ks:
        # gain[j] = sum of 1 / log2(r + 2) over ranks r < j, for j = 0..k
        gain = torch.cat([torch.zeros(1, dtype=torch.float64),
                          torch.cumsum(1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2.0), 0)])
        gain = gain.to(higher.device)
        lo, hi = higher.clamp(max=k).long(), (higher + size).clamp(max=k).long()
        out[f"ndcg@{k}"] = torch.where(untied, exact[f"ndcg@{k}"], (gain[hi] - gain[lo]) / size)
    # sum of 1 / (r + 1) for r in [a, b) = H(b) - H(a), with H(n) = digamma(n + 1) + Euler's gamma
    mrr = (torch.special.digamma(higher + size + 1.0) - torch.special.digamma(higher + 1.0)) / size
    out["mrr"] = torch.where(untied, exact["mrr"], mrr)
    return out


def evaluate(
    score_fn: ScoreFn,
    cases: Iterable[Case],
    batch_size: int = 256,
    ks: Sequence[int] = (10, 50),
    exclude_history: bool = False,
    progress: bool | None = False,
    desc: str = "evaluate",
    ties: str = DEFAULT_TIES,
    standard_error: bool = False,
) -> dict[str, float]:
    """Mean full-ranking metrics of `score_fn(histories) -> (B, N)` over `(history, target)` cases.

    Users are scored `batch_size` at a time, so memory stays at a few batch_size x N
    arrays whatever the number of users. With `exclude_history` (the serving protocol),
    items already in a history are scored as worst (a repeat target then ranks last, as
    it would in a recommender that hides seen items). `progress`: a bar on stderr
    (None: only when stderr is a terminal). `ties`: see `rank_metrics`.

    Besides the metrics: `n` cases, `n_tied` cases whose target ties with another item, and
    `last_item_first`, the share of cases whose last history item scores above every other
    item (before any hiding): how often a model just echoes what the user had last.
    With `standard_error`, also `se`: each metric's standard error over the cases (their sample
    standard deviation / sqrt(n)), the test-set noise that one run's number carries.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cases = list(cases)
    keys = metric_keys(ks)
    sums = {k: 0.0 for k in keys}
    squares = {k: 0.0 for k in keys}
    n_tied = echoed = 0
    batches = range(0, len(cases), batch_size)
    if progress is not False:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch", disable=None if progress is None else False, leave=False)
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
        with_history = [b for b, h in enumerate(histories) if h]
        if with_history:
            last = torch.tensor([histories[b][-1] for b in with_history], dtype=torch.long)
            sub = scores[torch.tensor(with_history, device=scores.device)] if len(with_history) < len(chunk) else scores
            echoed += int(ranked_first(sub, last).sum())
        if exclude_history:
            scores = scores.float().clone()
            rows = [b for b, h in enumerate(histories) for _ in h]
            cols = [i for h in histories for i in h]
            if cols:
                scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
        higher, tied = rank_counts(scores, targets)
        if exclude_history:  # a hidden target cannot be recommended: last among the hidden, no tie credit
            hidden = torch.tensor([int(t) in set(h) for h, (_, t) in zip(histories, chunk)], device=higher.device)
            higher = torch.where(hidden, higher + tied, higher)
            tied = torch.where(hidden, torch.zeros_like(tied), tied)
        m = metrics_from_counts(higher, tied, ks, ties)
        n_tied += int((tied > 0).sum())
        for k in keys:
            sums[k] += float(m[k].sum())
            squares[k] += float((m[k] * m[k]).sum())
    n = len(cases)
    result: dict = {k: (sums[k] / n if n else math.nan) for k in keys}
    result["last_item_first"] = echoed / n if n else math.nan
    result["n"] = n
    result["n_tied"] = n_tied
    if standard_error:
        # the sample variance from the two sums (float64 per case: no cancellation at these sizes)
        result["se"] = {k: math.sqrt(max(squares[k] - sums[k] ** 2 / n, 0.0) / (n - 1) / n) if n > 1 else math.nan
                        for k in keys}
    return result
