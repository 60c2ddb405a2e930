"""`Dropout`: `nn.Dropout` with a CPU mask drawn 64 bits at a time.

PyTorch's CPU dropout draws one Bernoulli sample per element from the global generator, a large
share of a reference-size dtrec training step, where dropout 0.5 touches every token of the user
and item towers. This module draws 64-bit random integers instead and reads each as four 16-bit
numbers, one per element: an element is kept when its number is at least the p-quantile, so each
is kept independently with probability 1 - p (p rounded to 1/65,536) and scaled by 1 / (1 - p), as
`nn.Dropout` does. It uses the same global generator (so `torch.manual_seed` reproduces a run) but
a different random stream. `python scripts/bench_dropout.py` times whole epochs with and without it
(docs/performance.md). On a GPU, in eval mode and in place it is plain `F.dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> Tensor:
    """Boolean mask of `shape`, each element True independently with probability 1 - p (p in 1/65,536 steps)."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.randint(-(1 << 63), (1 << 63) - 1, (-(-n // 4),), dtype=torch.int64, device=device)
    draws = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    return draws >= round(p * _LEVELS) - _LEVELS // 2


class Dropout(nn.Dropout):
    """Drop-in `nn.Dropout` (same `p`, same scaling) whose CPU training mask is cheap to draw."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or self.p == 1.0 or self.inplace or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training, self.inplace)
        return x * keep_mask(x.shape, self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Replace every `nn.Dropout` inside `module` by `Dropout` of the same p (in place); returns `module`.

    Dropout holds no weights, so checkpoints are unaffected. Attention-weight dropout inside
    `nn.MultiheadAttention` is a functional call and stays PyTorch's own.
    """
    for name, child in list(module.named_children()):
        if type(child) is nn.Dropout:
            setattr(module, name, Dropout(child.p, child.inplace))
        else:
            use_fast_dropout(child)
    return module
