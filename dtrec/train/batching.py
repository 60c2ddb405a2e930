"""Training batches: the collator that pads each batch to its own longest, and the batch plans.

Examples come from `dtrec.sequences.build_examples`. Cloze: the next item's position
is always masked and every other position is masked with probability `mask_prob`;
every masked position predicts its own item. Causal: every position predicts the
item after it. `length_grouped_batches` / `BatchPlan` draw the batches (also SASRec's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import Sampler

from dtrec.sequences import pad, padded_width

if TYPE_CHECKING:
    from dtrec.config import ModelConfig


@dataclass
class Collator:
    """Turns example item lists into padded tensors; Cloze masking drawn from a seeded generator.

    A batch is padded to its longest example, rounded up to a multiple of `pad_multiple`
    (at most `max_length` positions): a GPU then meets a few batch shapes instead of one per
    length, which bounds the kernels that are planned or compiled per shape. Padding is
    masked everywhere, so the loss does not depend on it.
    """

    objective: str
    mask_prob: float = 0.2
    seed: int = 0
    pad_multiple: int = 1
    max_length: int | None = None  # the model's positions: max_len (causal), max_len + 1 (Cloze)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def for_model(cls, config: ModelConfig, seed: int = 0, pad_multiple: int = 1) -> "Collator":
        """The collator of a model: its objective and mask rate, widths capped at its positions."""
        positions = config.max_len + (1 if config.objective == "cloze" else 0)  # Cloze adds the masked query
        return cls(config.objective, config.mask_prob, seed, pad_multiple=pad_multiple, max_length=positions)

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        """Reseed, so an epoch's masks do not depend on what ran before (exact resume)."""
        self.generator.manual_seed(self.seed * 1_000_003 + epoch * 1_009 + rank)

    def __call__(self, examples: list[list[int]]) -> dict[str, Tensor | None]:
        b = len(examples)
        causal = self.objective == "causal"
        lens = torch.tensor([len(e) for e in examples], dtype=torch.long)
        shift = 1 if causal else 0  # causal examples hold one item more than positions: the last target
        longest = int(lens.max()) - shift
        length = padded_width(longest, self.pad_multiple, self.max_length)
        full = pad(examples, length + shift)
        n = lens - shift
        padding = torch.arange(length).unsqueeze(0) >= n.unsqueeze(1)
        if causal:
            items = full[:, :-1].masked_fill(padding, -1)
            return {"items": items, "padding": padding, "masked": None, "targets": full[:, 1:].contiguous()}
        items = full
        targets = torch.full((b, length), -1, dtype=torch.long)
        # drawn for the unrounded width, so that the masks do not depend on pad_multiple
        draw = torch.rand(b, longest, generator=self.generator) < self.mask_prob
        masked = torch.nn.functional.pad(draw, (0, length - longest)) & ~padding
        masked[torch.arange(b), lens - 1] = True
        targets = torch.where(masked, items, targets)
        return {"items": items, "padding": padding, "masked": masked, "targets": targets}


# Batches per length-sorted window: enough to drop most padding, few enough that batches stay random.
GROUP_BATCHES = 8


def length_grouped_batches(lengths: list[int], batch_size: int, generator: torch.Generator,
                           group: int = GROUP_BATCHES) -> list[list[int]]:
    """Batches of indices in random order, each drawn from examples of similar length.

    The indices are shuffled, cut into windows of `group` batches, each window is
    sorted by length (a stable sort, so ties stay shuffled) and cut into batches,
    and the batches are shuffled. Padding to a batch's longest example then costs
    little, while each batch is still a random draw from its window's length
    stratum (fairseq's and Hugging Face's `group_by_length`). `group=1` gives
    plain random batches.
    """
    if batch_size < 1 or group < 1:
        raise ValueError(f"batch_size and group must be at least 1, not {batch_size} and {group}")
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(perm), window):
        chunk = perm[start:start + window]
        if group > 1:
            chunk = sorted(chunk, key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


class BatchPlan(Sampler):
    """A `batch_sampler` of one epoch's global batches, each split over DDP ranks.

    Every rank draws the same global batches (seeded by `seed` and the epoch) and
    keeps every `world_size`-th index of each, so all ranks run the same number
    of steps. `group_by_length` groups similar lengths (`length_grouped_batches`).
    """

    def __init__(self, lengths: list[int], batch_size: int, *, group_by_length: bool = True, group: int = GROUP_BATCHES,
                 seed: int = 0, world_size: int = 1, rank: int = 0):
        super().__init__()
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group = group if group_by_length else 1
        self.seed, self.world_size, self.rank = seed, world_size, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the batches of `epoch` (the same on every rank, and again on resume)."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's global batches (indices into `lengths`)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return length_grouped_batches(self.lengths, self.batch_size, g, self.group)

    def __iter__(self):
        for batch in self.batches():
            if len(batch) < self.world_size:  # a short last batch: repeat items so no rank is left empty
                batch = (batch * self.world_size)[: self.world_size]
            yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        # windows hold whole batches, so only the last window can leave a short batch
        return -(-len(self.lengths) // self.batch_size)
