"""Learned item IDs on top of the content embedding: UniSRec's transductive setting, an option.

dtrec's item tower knows an item only by its frozen features, which is what lets it score a catalog it
never saw and an item uploaded a second ago. On a dense catalog an ID-based model (SASRec) learns per
item what the features cannot say (that two look-alike movies are watched by different people). With
`ItemIds` each row of the training catalog gets a learned vector added to its content embedding, on
both sides (history tokens and candidates), as UniSRec's transductive fine-tuning adds an ID
embedding to its text embedding. Rows past the table (new items, uploads) and rows never trained on
(the cold-start items: held out of every softmax, their vectors stay at zero) are scored by content
alone, so cold start still works.

The vectors belong to one catalog's row order. The module keeps a short signature of each row's features
(`row_signatures`: a few fixed random projections of the unit-length feature vectors), and `matches` refuses
features whose first rows are another catalog's or another order of it, even two swapped look-alike items,
so an ID checkpoint never silently scores the wrong movie's vector.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dtrec.features import Features

# Like `RepeatBias.scale`: Adam moves a weight by about the learning rate per step, and content
# embeddings have components of about 2 (norm about 20 at d_model 128); without a scale an ID vector
# would need thousands of steps to matter.
ID_SCALE = 5.0
# Projections per row: two different items agree on all of them within the tolerance with odds far below
# one in a million, unless their feature vectors are near-identical (cosine above about 0.999).
SIGNATURE_DIMS = 8
# Each projection of a unit vector is about N(0, 1); a fp16 round trip (demo folders) moves it by about 1e-3.
SIGNATURE_ATOL = 0.05


def _signs(name: str, dim: int) -> Tensor:
    """A fixed ±1 matrix (dim, SIGNATURE_DIMS) per modality, from integer hashing (no RNG whose stream could change)."""
    i = torch.arange(dim, dtype=torch.int64).unsqueeze(1)
    j = torch.arange(SIGNATURE_DIMS, dtype=torch.int64).unsqueeze(0)
    h = (i * 0x9E3779B1 + j * 0x85EBCA77 + zlib.crc32(name.encode())) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    h = h ^ (h >> 13)
    return ((h & 1) * 2 - 1).float()


def row_signatures(features: Features, rows: int) -> Tensor:
    """Each of the first `rows` rows' signature (rows, SIGNATURE_DIMS), float32: fixed ±1 projections of its
    unit-length feature vector in each present modality, summed over modalities."""
    out = torch.zeros(rows, SIGNATURE_DIMS)
    for m in features.modalities:
        v = F.normalize(features.values[m][:rows].float().cpu(), dim=1)
        p = features.present[m][:rows].cpu()
        out += torch.where(p.unsqueeze(1), v @ _signs(m, v.shape[1]), torch.zeros(()))
    return out


def same_rows(a: Tensor, b: Tensor) -> bool:
    """Whether two row-signature tables are the same catalog rows in the same order."""
    return a.shape == b.shape and bool(torch.allclose(a.float().cpu(), b.float().cpu(), rtol=0, atol=SIGNATURE_ATOL))


class ItemIds(nn.Module):
    """One learned vector per row of the training catalog, from zero, added to the item tower's output."""

    def __init__(self, rows: int, dim: int, scale: float = ID_SCALE):
        super().__init__()
        if rows < 1:
            raise ValueError(f"an item-ID table needs at least one row, got {rows}")
        self.scale = scale
        self.weight = nn.Parameter(torch.zeros(rows, dim))
        # Which catalog the rows are: saved with the weights (see the module docstring).
        self.register_buffer("row_signature", torch.zeros(rows, SIGNATURE_DIMS))

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
        self.row_signature.copy_(row_signatures(features, self.rows).to(self.row_signature))

    def matches(self, features: Features) -> bool:
        """Whether the first rows of `features` are the catalog the IDs were trained on."""
        if len(features) < self.rows:
            return False
        return same_rows(row_signatures(features, self.rows), self.row_signature)
