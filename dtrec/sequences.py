"""Item sequences as model input, for dtrec and SASRec alike: training windows and padded batches.

A history is a list of item indices, oldest first. `build_examples` cuts training
histories into examples (`history + [next]`); `pad` lays sequences into one tensor,
items first and padding after (dtrec's towers) or padding first and items last
(SASRec, whose positions count from the end of a left-padded window);
`padded_width` rounds a batch's width up so that a GPU meets a few shapes.
`history_batch` is the user tower's inference input built from them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def build_examples(sequences: list[list[int]], objective: str, max_len: int) -> list[list[int]]:
    """Item lists fed to the collator: `history + [next]`, at most `max_len + 1` items each.

    Cloze: one example per (prefix -> next) pair. Causal: windows of `max_len + 1` items
    cut from the end of each sequence, overlapping by one item so that every transition
    is a target exactly once (also SASRec's training windows)."""
    out: list[list[int]] = []
    window = max_len + 1
    for s in sequences:
        if len(s) < 2:
            continue
        if objective == "cloze":
            for t in range(1, len(s)):
                out.append(list(s[max(0, t - max_len): t + 1]))
        elif objective == "causal":
            end = len(s)
            while end >= 2:
                start = max(0, end - window)
                out.append(list(s[start:end]))
                end = start + 1  # the next window ends where this one's first target was
                if start == 0:
                    break
        else:
            raise ValueError(f"objective must be 'cloze' or 'causal', not {objective!r}")
    return out


def padded_width(width: int, multiple: int = 1, cap: int | None = None) -> int:
    """`width` rounded up to a multiple of `multiple`, but never past `cap` (nor below `width`)."""
    if multiple < 1:
        raise ValueError(f"pad multiple must be at least 1, not {multiple}")
    rounded = -(-width // multiple) * multiple
    return max(width, min(rounded, cap)) if cap is not None else rounded


def pad(sequences: list[list[int]], width: int, *, fill: int = -1, left: bool = False) -> Tensor:
    """(B, width) long tensor of `sequences` (each at most `width` long), `fill` elsewhere; `left` puts the
    padding first."""
    b = len(sequences)
    lens = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    if b and int(lens.max()) > width:
        raise ValueError(f"a sequence of {int(lens.max())} items does not fit in width {width}")
    # One vectorised scatter instead of a tensor per sequence: on a GPU the collator is on the step's path.
    flat = torch.tensor([i for s in sequences for i in s], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(b), lens)
    cols = torch.arange(len(flat)) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    if left:
        cols += torch.repeat_interleave(width - lens, lens)
    out = torch.full((b, width), fill, dtype=torch.long)
    out[rows, cols] = flat
    return out


def history_batch(histories: list[list[int]], max_len: int, objective: str) -> dict[str, Tensor | None]:
    """Left-aligned, right-padded user-tower input for inference, with the position to read.

    Each history keeps its last `max_len` items; Cloze appends a masked query
    position after the last item and reads there, causal reads the last item.
    """
    hs = [list(map(int, h))[-max_len:] for h in histories]
    if any(len(h) == 0 for h in hs):
        raise ValueError("a history is empty: the user tower needs at least one item")
    extra = 1 if objective == "cloze" else 0
    lens = torch.tensor([len(h) for h in hs], dtype=torch.long)
    length = max((len(h) for h in hs), default=0) + extra
    items = pad(hs, length)
    padding = torch.arange(length).unsqueeze(0) >= (lens + extra).unsqueeze(1)
    masked = None
    if extra:
        masked = torch.zeros(len(hs), length, dtype=torch.bool)
        masked[torch.arange(len(hs)), lens] = True
    return {"items": items, "padding": padding, "masked": masked, "read": lens - 1 + extra}
