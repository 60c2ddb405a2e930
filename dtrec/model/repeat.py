"""The repeat term: a learned score offset for items the user already has, by how recently they had them.

A two-tower score is a cosine, and an item is closest to itself: a user vector that points at the
neighbours of the last item points at that item too, so with nothing hidden the model recommends what
the user just had (the echo, docs/results.md). A dot product cannot learn "not this one" for every
item, but the history is in the input, so the model can: `RepeatBias` adds `weight[p]` to the score of
an item that sits `p` places from the end of the history (0 = the last item), once per occurrence. The weights start at zero (the plain model) and are learned with the retrieval loss,
so a catalog where people never repeat learns to rank history items down and one where they re-buy
learns to rank them up. This is RepeatNet's repeat mode (Ren et al., AAAI 2019) reduced to a bias.

At inference the whole history counts: an item older than the window gets the oldest place's offset
(`history_offsets`). `repeat_offsets` is the batched form used in training, `repeat_offsets_at` its
scatter for chosen positions, and `repeat_offsets_reference` the plain-Python definition the tests hold
all three to.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RepeatBias(nn.Module):
    """One learned offset per recency position of the user tower's window, from zero.

    The offsets are `scale * weight`. Adam moves a weight by about the learning rate per step whatever
    its gradient, so without the scale an offset of the size scores differ by (tenths of a cosine) would
    take thousands of steps, more than a whole fine-tuning run (measured: docs/results.md). `scale` is
    the size, in score units, that a hundred steps at lr 1e-3 can reach: 10 for cosines, more for
    unnormalised logits.
    """

    def __init__(self, max_len: int, scale: float = 10.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.zeros(max_len))

    def values(self) -> Tensor:
        """The offsets by recency (max_len,): index 0 is the last history item."""
        return self.scale * self.weight

    def forward(self, items: Tensor, padding: Tensor, candidates: Tensor) -> Tensor:
        """`repeat_offsets` with this module's offsets."""
        return repeat_offsets(self.values(), items, padding, candidates)


def repeat_offsets(weight: Tensor, items: Tensor, padding: Tensor, candidates: Tensor) -> Tensor:
    """Score offsets (B, L, C) of candidates for every causal position of a padded history batch.

    `items` (B, L) item ids, `padding` (B, L) True where there is no item. Each causal position `t`
    is a query whose history is positions `0..t`; an item at position `j` of it gets `weight[t - j]`
    (positions past the weights' length share the last one). `candidates` (C,) item ids
    (`torch.arange(N)` for a catalog of N).
    """
    b, length = items.shape
    dev = items.device
    pos = torch.arange(length, device=dev)
    lag = pos.unsqueeze(1) - pos.unsqueeze(0)  # (t, j) -> t - j
    w = weight[lag.clamp(0, weight.numel() - 1)]  # (L, L)
    w = w.masked_fill(lag < 0, 0.0).unsqueeze(0).expand(b, -1, -1)
    w = w.masked_fill(padding.unsqueeze(1) | padding.unsqueeze(2), 0.0)  # padding neither gives nor asks
    hit = (items.unsqueeze(-1) == candidates.to(dev).view(1, 1, -1)).to(w.dtype)  # (B, L, C)
    return torch.bmm(w, hit)


def repeat_offsets_at(weight: Tensor, items: Tensor, padding: Tensor, num_items: int, queries: Tensor) -> Tensor:
    """`repeat_offsets` over every item for only the positions where `queries` (B, L) is True: (K, num_items).

    Scatters one value per (query, history item) instead of comparing every item with every candidate, so
    memory is the output's; the same numbers as `repeat_offsets(...)[queries]`.
    """
    b, length = items.shape
    dev = items.device
    pos = torch.arange(length, device=dev)
    lag = pos.view(1, length, 1) - pos.view(1, 1, length)  # (1, t, j)
    pair = (lag >= 0) & ~padding.unsqueeze(1) & queries.unsqueeze(2)  # (B, t, j): query t reads item j
    row_of = torch.cumsum(queries.reshape(-1).long(), 0).view(b, length) - 1  # output row of each query
    bb, tt, jj = pair.nonzero(as_tuple=True)
    vals = weight[(tt - jj).clamp(max=weight.numel() - 1)]
    out = torch.zeros(int(queries.sum()), num_items, dtype=weight.dtype, device=dev)
    return out.index_put((row_of[bb, tt], items[bb, jj]), vals, accumulate=True)


def history_offsets(values: Tensor, histories: list[list[int]], num_items: int) -> Tensor:
    """Offsets (B, num_items) of each whole history read at its last item, one scatter over its items.

    Inference's form: the history is not cut to the user tower's window, so an item the user had before
    it gets the oldest place's offset (training windows hold at most `max_len` items, so that offset is
    learned on the oldest place of the window and applies to every older one). Cost: the total length
    of the histories, whatever their longest.
    """
    dev = values.device
    lens = torch.tensor([len(h) for h in histories], dtype=torch.long, device=dev)
    out = torch.zeros(len(histories), num_items, dtype=values.dtype, device=dev)
    if not int(lens.sum()):
        return out
    flat = torch.tensor([int(i) for h in histories for i in h], dtype=torch.long, device=dev)
    rows = torch.repeat_interleave(torch.arange(len(histories), device=dev), lens)
    start = torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    lag = torch.repeat_interleave(lens, lens) - 1 - (torch.arange(len(flat), device=dev) - start)
    return out.index_put((rows, flat), values[lag.clamp(max=values.numel() - 1)], accumulate=True)


def repeat_offsets_reference(weight: list[float], histories: list[list[int]], num_items: int) -> list[list[float]]:
    """The offsets of every item 0..num_items-1 for each history read at its last item, by loops."""
    out = []
    for h in histories:
        row = [0.0] * num_items
        for p, item in enumerate(reversed(h)):
            row[item] += weight[min(p, len(weight) - 1)]
        out.append(row)
    return out


__all__ = ["RepeatBias", "history_offsets", "repeat_offsets", "repeat_offsets_at", "repeat_offsets_reference"]
