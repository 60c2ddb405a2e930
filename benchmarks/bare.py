"""The yardstick: a bare PyTorch training loop of dtrec's model, that `python -m benchmarks` times fine-tuning against.

A deliberate copy, kept outside the package: the model computes what `DualTower` +
`FinetuneObjective` compute for the causal objective with shared towers and negatives
"all" (every modality a token per position, reverse positions, the whole catalog through
the item tower every step, cosine softmax over all items), and nothing else: no
missing-modality masks, no Cloze, no checkpoints. Its parameters carry the user encoder's
names, so a DualTower's weights load into it, and tests/test_bare.py checks that the two
losses stay equal: a change to dtrec's model that this copy does not follow fails there.
The loop is the minimal one a person would write: every history pre-padded on the device
at `max_len`, random batches, the whole step under bf16 autocast on a GPU (the logits
too), fused AdamW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dtrec.config import ModelConfig
from dtrec.model.fusion import canonical_order
from dtrec.train.batching import Collator


class BareTwoTower(nn.Module):
    """dtrec's shared-tower model, causal, all modalities present: `forward` returns the mean loss."""

    def __init__(self, modality_dims: dict[str, int], d_model: int = 512, n_layers: int = 2, n_heads: int = 8,
                 d_ff: int = 1024, dropout: float = 0.5, emb_dropout: float = 0.2, max_len: int = 20,
                 temperature: float = 0.05):
        super().__init__()
        self.modalities = canonical_order(modality_dims)
        self.d_model = d_model
        self.temperature = temperature
        self.in_proj = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(modality_dims[m], d_model), nn.LayerNorm(d_model)) for m in self.modalities})
        self.position = nn.Embedding(max_len + 1, d_model)
        self.modality_type = nn.Embedding(len(self.modalities), d_model)
        self.emb_norm = nn.LayerNorm(d_model)
        self.emb_dropout = nn.Dropout(emb_dropout)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, activation="gelu", batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out_proj = nn.ModuleDict({m: nn.Linear(d_model, d_model) for m in self.modalities})

    def encode(self, feats: list[Tensor], pos_id: Tensor, key_padding: Tensor | None, causal: bool) -> Tensor:
        """(B, L, d) outputs for per-modality features (B, L, D_m) at positions `pos_id` (B, L)."""
        b, length = pos_id.shape
        m_count = len(self.modalities)
        pos = self.position(pos_id)
        x = torch.stack([self.in_proj[m](feats[k]) + pos + self.modality_type.weight[k]
                         for k, m in enumerate(self.modalities)], 1)
        x = self.emb_dropout(self.emb_norm(x.reshape(b, m_count * length, self.d_model)))
        mask = None
        if causal:
            tok = torch.arange(length, device=pos_id.device).repeat(m_count)
            mask = tok.unsqueeze(0) > tok.unsqueeze(1)
        pad = key_padding.repeat(1, m_count) if key_padding is not None else None
        h = self.transformer(x, mask=mask, src_key_padding_mask=pad, is_causal=False)  # no guess: no device sync
        h = h.reshape(b, m_count, length, self.d_model)
        return torch.stack([self.out_proj[m](h[:, k]) for k, m in enumerate(self.modalities)], 1).amax(1)

    def forward(self, items: Tensor, padding: Tensor, targets: Tensor, table: list[Tensor]) -> Tensor:
        """Mean softmax loss over all items of every position's next item (`targets` -1: none)."""
        length = items.shape[1]
        steps = torch.arange(length, device=items.device)
        pos_id = ((~padding).sum(1, keepdim=True) - 1 - steps).clamp(min=0)
        idx = items.clamp(min=0)
        users = self.encode([t[idx] for t in table], pos_id, padding, causal=True)
        n = table[0].shape[0]
        item_pos = torch.zeros(n, 1, dtype=torch.long, device=items.device)
        catalog = self.encode([t.unsqueeze(1) for t in table], item_pos, None, causal=False)[:, 0]
        logits = F.normalize(users.reshape(-1, self.d_model), dim=-1) @ F.normalize(catalog, dim=-1).T
        return F.cross_entropy(logits / self.temperature, targets.reshape(-1), ignore_index=-1)


def bare_model(config: ModelConfig) -> BareTwoTower:
    """A BareTwoTower of a `ModelConfig`'s size."""
    return BareTwoTower(config.modality_dims, config.d_model, config.n_layers, config.n_heads, config.d_ff,
                        config.dropout, config.emb_dropout, config.max_len, config.temperature)


def padded_examples(examples: list[list[int]], max_len: int) -> dict[str, Tensor]:
    """Causal items / padding / targets of every example, padded once to `max_len` positions."""
    # one fixed width for every batch, as a minimal loop has: the batch's width rounded up to max_len
    b = Collator("causal", pad_multiple=max_len, max_length=max_len)(examples)
    return {k: b[k] for k in ("items", "padding", "targets")}
