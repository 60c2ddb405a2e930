"""Training examples from histories, and the collator that pads each batch to its own longest.

Cloze: one example per (prefix -> next) pair; the next item's position is always
masked and every other position is masked with probability `mask_prob`; every
masked position predicts its own item. Causal: one example per history window;
every position predicts the item after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def build_examples(sequences: list[list[int]], objective: str, max_len: int) -> list[list[int]]:
    """Item lists fed to the collator: `history + [next]`, at most `max_len + 1` items each."""
    out: list[list[int]] = []
    window = max_len + 1
    for s in sequences:
        if len(s) < 2:
            continue
        if objective == "cloze":
            for t in range(1, len(s)):
                out.append(list(s[max(0, t - max_len): t + 1]))
        elif objective == "causal":
            # Windows of max_len + 1 items from the end, overlapping by one so every transition counts once.
            end = len(s)
            while end >= 2:
                start = max(0, end - window)
                out.append(list(s[start:end]))
                end = start + 1
                if start == 0:
                    break
        else:
            raise ValueError(f"objective must be 'cloze' or 'causal', not {objective!r}")
    return out


@dataclass
class Collator:
    """Turns example item lists into padded tensors; Cloze masking drawn from a seeded generator."""

    objective: str
    mask_prob: float = 0.2
    seed: int = 0

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        """Reseed, so an epoch's masks do not depend on what ran before (exact resume)."""
        self.generator.manual_seed(self.seed * 1_000_003 + epoch * 1_009 + rank)

    def __call__(self, examples: list[list[int]]) -> dict[str, Tensor | None]:
        b = len(examples)
        causal = self.objective == "causal"
        length = max(len(e) for e in examples) - (1 if causal else 0)
        items = torch.full((b, length), -1, dtype=torch.long)
        targets = torch.full((b, length), -1, dtype=torch.long)
        padding = torch.ones(b, length, dtype=torch.bool)
        for i, e in enumerate(examples):
            e_t = torch.tensor(e, dtype=torch.long)
            if causal:
                n = len(e) - 1
                items[i, :n] = e_t[:-1]
                targets[i, :n] = e_t[1:]
            else:
                n = len(e)
                items[i, :n] = e_t
            padding[i, :n] = False
        if causal:
            return {"items": items, "padding": padding, "masked": None, "targets": targets}
        lengths = (~padding).sum(1)
        masked = (torch.rand(b, length, generator=self.generator) < self.mask_prob) & ~padding
        masked[torch.arange(b), lengths - 1] = True
        targets = torch.where(masked, items, targets)
        return {"items": items, "padding": padding, "masked": masked, "targets": targets}
