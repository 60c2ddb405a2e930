"""Learned item IDs on top of the content embedding: UniSRec's transductive setting, an option.

dtrec's item tower knows an item only by its frozen features, which is what lets it score a catalog it
never saw and an item uploaded a second ago. On a dense catalog an ID-based model (SASRec) learns per
item what the features cannot say (that two look-alike movies are watched by different people). With
`ItemIds` each row of the training catalog gets a learned vector added to its content embedding, on
both sides (history tokens and candidates), as UniSRec's transductive fine-tuning adds an ID
embedding to its text embedding. Rows past the table (new items, uploads) and rows never trained on
(the cold-start items: held out of every softmax, their vectors stay at zero) are scored by content
alone, so cold start still works.

The vectors belong to one catalog's row order. The module keeps a per-row checksum of the features it
was trained on (`row_checksums`), and `check` refuses features whose first rows are another catalog's,
so an ID checkpoint never silently scores the wrong movie's vector.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dtrec.features import Features

# Like `RepeatBias.scale`: Adam moves a weight by about the learning rate per step, and content
# embeddings have components of about 2 (norm about 20 at d_model 128); without a scale an ID vector
# would need thousands of steps to matter.
ID_SCALE = 5.0
# Features round-trip through fp16 in demo folders: a row's mean |value| then moves by far less than this.
CHECKSUM_RTOL = 5e-3


def row_checksums(features: Features, rows: int) -> Tensor:
    """Each of the first `rows` rows' mean absolute feature value over its present modalities (rows,), float32."""
    total = torch.zeros(rows)
    count = torch.zeros(rows)
    for m in features.modalities:
        v = features.values[m][:rows].float().cpu()
        p = features.present[m][:rows].cpu()
        total += torch.where(p, v.abs().sum(dim=1), torch.zeros(()))
        count += p.float() * v.shape[1]
    return total / count.clamp_min(1)


class ItemIds(nn.Module):
    """One learned vector per row of the training catalog, from zero, added to the item tower's output."""

    def __init__(self, rows: int, dim: int, scale: float = ID_SCALE):
        super().__init__()
        if rows < 1:
            raise ValueError(f"an item-ID table needs at least one row, got {rows}")
        self.scale = scale
        self.weight = nn.Parameter(torch.zeros(rows, dim))
        # Which catalog the rows are: saved with the weights (see the module docstring).
        self.register_buffer("row_check", torch.zeros(rows))

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    def forward(self, rows: Tensor) -> Tensor:
        """The ID vectors (N, dim) of catalog rows `rows` (N,); zero for rows past the table."""
        known = rows < self.rows
        out = self.scale * self.weight[rows.clamp(max=self.rows - 1)]
        return out * known.unsqueeze(-1).to(out.dtype)

    def bind(self, features: Features) -> None:
        """Record `features` as the catalog these rows are (before training)."""
        if len(features) < self.rows:
            raise ValueError(f"the features have {len(features)} rows, fewer than the {self.rows} item IDs")
        self.row_check.copy_(row_checksums(features, self.rows).to(self.row_check))

    def matches(self, features: Features) -> bool:
        """Whether the first rows of `features` are the catalog the IDs were trained on."""
        if len(features) < self.rows:
            return False
        theirs = row_checksums(features, self.rows)
        return bool(torch.allclose(theirs, self.row_check.float().cpu(), rtol=CHECKSUM_RTOL, atol=1e-6))
