"""The content term: a learned score offset for how alike, by the frozen features alone, an item is to each of
the last few history items.

The towers learn their own item space, and on a catalog they never saw that space keeps only part of the
frozen encoders' neighbourhoods, so content kNN on the raw features, which knows nothing of sequences, beats
the model there (docs/pretraining.md, "Where zero-shot loses to content kNN"). `ContentBias` gives the score a
direct path to the frozen features: an item gains `weight[p] * cos(x_item, x_h)` for the history item `h` that
sits `p` places from the end (p < lags) when it is not `h` itself, where `x` are the features' `content_vectors`
(the space content kNN ranks in). An item's own place is the repeat term's (`dtrec.model.repeat`): left in, its
cosine of 1 would make these weights carry "not this one" too, beside "like this one". The weights start at zero (the
plain model) and are learned with the retrieval loss; they hold nothing of any one catalog, so they carry over
to a catalog the model never saw.

At inference the term is one vector per user, `query = sum_p weight[p] * x_{h_p}`, whose dot product with each
item's content vector is its offset, less each history item's own share (`content_scores`). `lagged_offsets` is
the batched training form over every causal position of a window (`content_offsets` from the vectors
themselves); `content_offsets_reference` the plain-Python definition the tests hold both to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ContentBias(nn.Module):
    """One learned weight per recency place of the last `lags` history items, from zero.

    The weights are `scale * weight` for the reason `RepeatBias` gives: a hundred Adam steps at lr 1e-3 should
    be able to reach an offset of the size cosines differ by.
    """

    def __init__(self, lags: int, scale: float = 10.0):
        super().__init__()
        if lags < 1:
            raise ValueError(f"the content term needs at least one history place, got {lags}")
        self.scale = scale
        self.weight = nn.Parameter(torch.zeros(lags))

    def values(self) -> Tensor:
        """The weights by recency (lags,): index 0 is the last history item."""
        return self.scale * self.weight

    def forward(self, sims: Tensor, padding: Tensor, same: Tensor | None = None) -> Tensor:
        """`lagged_offsets` of the cosines `sims` (B, L, C) with this module's weights."""
        return lagged_offsets(self.values(), sims, padding, same)


def lagged_offsets(weight: Tensor, sims: Tensor, padding: Tensor, same: Tensor | None = None) -> Tensor:
    """Score offsets (B, L, C) for every causal position of a padded history batch, from `sims` (B, L, C): the
    content cosine of the item at each position with each candidate. `padding` (B, L) is True where there is no
    item, `same` (B, L, C) where the candidate is that position's item itself (its share is left out). Position
    `t` reads the items at `t, t-1, ..., t-lags+1` of its own window: the one at `t - p` gives
    `weight[p] * sims[t - p]`."""
    length = sims.shape[1]
    sims = sims.masked_fill(padding.unsqueeze(-1), 0.0)
    if same is not None:
        sims = sims.masked_fill(same, 0.0)
    out = weight[0] * sims
    for p in range(1, min(weight.numel(), length)):
        out = out + F.pad(weight[p] * sims[:, :-p], (0, 0, p, 0))  # position t takes sims[t - p]
    return out


def content_offsets(weight: Tensor, items: Tensor, padding: Tensor, content: Tensor, candidates: Tensor) -> Tensor:
    """`lagged_offsets` for item ids `items` (B, L) against candidate ids `candidates` (C,), from the content
    vectors `content` (N, D) of every item."""
    sims = content[items.clamp(min=0)] @ content[candidates].T
    return lagged_offsets(weight, sims, padding, items.unsqueeze(-1) == candidates.view(1, 1, -1))


def _tails(histories: list[list[int]], lags: int) -> Tensor:
    """(B, lags) the last `lags` items of each history, newest first, -1 where a history is shorter."""
    rows = torch.full((len(histories), lags), -1, dtype=torch.long)
    for b, h in enumerate(histories):
        tail = [int(i) for i in reversed(h[-lags:])]
        rows[b, :len(tail)] = torch.tensor(tail, dtype=torch.long)
    return rows


def content_scores(weight: Tensor, histories: list[list[int]], content: Tensor) -> Tensor:
    """The offsets (B, N) of every item of `content` (N, D) for each history read at its last item."""
    tails = _tails(histories, weight.numel()).to(content.device)
    real = tails >= 0
    gathered = content[tails.clamp(min=0)] * real.unsqueeze(-1).to(content.dtype)  # (B, lags, D)
    w = weight.to(content.dtype)
    out = torch.einsum("p,bpd->bd", w, gathered) @ content.T
    # Each history item's own share is the repeat term's: take it back out.
    own = (w.unsqueeze(0) * (gathered * gathered).sum(-1)).masked_fill(~real, 0.0)  # (B, lags)
    rows = torch.arange(len(histories), device=content.device).unsqueeze(1).expand_as(tails)
    return out.index_put((rows[real], tails[real]), -own[real], accumulate=True)


def content_offsets_reference(weight: list[float], histories: list[list[int]],
                              content: list[list[float]]) -> list[list[float]]:
    """The offsets of every item for each history read at its last item, by loops over `content` rows."""
    out = []
    for h in histories:
        row = []
        for c, x in enumerate(content):
            s = 0.0
            for p, item in enumerate(reversed(h[-len(weight):])):
                if item != c:
                    s += weight[p] * sum(a * b for a, b in zip(content[item], x))
            row.append(s)
        out.append(row)
    return out


__all__ = ["ContentBias", "content_offsets", "content_offsets_reference", "content_scores", "lagged_offsets"]
