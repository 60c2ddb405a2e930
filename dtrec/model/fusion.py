"""`FusionEncoder`: one Transformer over every (position, modality) token of a sequence.

Each item at each position contributes one token per modality (projected by
`Linear + LayerNorm`, plus a learned position and modality-type embedding).
Padding positions and missing modalities are hidden from attention by the key
padding mask; positions are counted back from the most recent item (`reverse_positions`;
the reference counts from the oldest). Each position's output is the element-wise max over its present
modalities after a per-modality output projection (docs/design.md "The model").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dtrec.model.dropout import use_fast_dropout


def canonical_order(modalities) -> tuple[str, ...]:
    """Modalities in dtrec's fixed order (text, image, then any other by name)."""
    known = ("text", "image")
    return tuple(m for m in known if m in modalities) + tuple(sorted(m for m in modalities if m not in known))


class FusionEncoder(nn.Module):
    """Multi-modal sequence encoder returning one vector per position."""

    def __init__(
        self,
        modality_dims: dict[str, int],
        d_model: int = 512,
        n_layers: int = 2,
        n_heads: int = 8,
        d_ff: int = 1024,
        dropout: float = 0.5,
        emb_dropout: float = 0.2,
        max_positions: int = 21,
        reverse_positions: bool = True,
    ):
        super().__init__()
        if not modality_dims:
            raise ValueError("FusionEncoder needs at least one modality")
        # A canonical order: config.json may list the modalities in any order.
        self.modalities: tuple[str, ...] = canonical_order(modality_dims)
        self.d_model = d_model
        self.max_positions = max_positions
        self.reverse_positions = reverse_positions
        self.in_proj = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(modality_dims[m], d_model), nn.LayerNorm(d_model)) for m in self.modalities}
        )
        self.position = nn.Embedding(max_positions, d_model)
        self.modality_type = nn.Embedding(len(self.modalities), d_model)
        # The content of a masked (Cloze) position: one learned vector per modality.
        self.mask_token = nn.Parameter(torch.zeros(len(self.modalities), d_model))
        self.emb_norm = nn.LayerNorm(d_model)
        self.emb_dropout = nn.Dropout(emb_dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout, activation="gelu", batch_first=True
        )
        # Nested tensors would drop padded tokens in eval only, making train/eval paths differ.
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out_proj = nn.ModuleDict({m: nn.Linear(d_model, d_model) for m in self.modalities})
        use_fast_dropout(self)  # same dropout, a cheaper CPU mask (dtrec/model/dropout.py)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal(0.02) embeddings, as the reference initialises them."""
        for emb in (self.position.weight, self.modality_type.weight, self.mask_token):
            nn.init.trunc_normal_(emb, std=0.02)

    def forward(
        self,
        values: dict[str, Tensor],
        present: dict[str, Tensor],
        padding: Tensor,
        masked: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """Encode `values[m]` (B, L, D_m) into (B, L, d).

        `present[m]` (B, L) marks real features, `padding` (B, L) marks padded
        positions, `masked` (B, L) marks positions whose content is replaced by
        the learned mask token (all modalities then count as present). With
        `causal`, a position attends only to itself and earlier positions.
        """
        b, length = padding.shape
        if length > self.max_positions:
            raise ValueError(f"sequence of {length} positions exceeds the position table ({self.max_positions})")
        device = padding.device
        tokens, pres = [], []
        steps = torch.arange(length, device=device)
        if self.reverse_positions:
            # Count back from each row's last position, so the read-out position always has index 0.
            pos_id = ((~padding).sum(1, keepdim=True) - 1 - steps).clamp(min=0)
        else:
            pos_id = steps.unsqueeze(0).expand(b, length)
        pos = self.position(pos_id)
        for k, m in enumerate(self.modalities):
            x = self.in_proj[m](values[m].to(self.position.weight.dtype))
            p = present[m].bool()
            if masked is not None:
                x = torch.where(masked.unsqueeze(-1), self.mask_token[k].to(x.dtype), x)
                p = p | masked
            tokens.append(x + pos + self.modality_type.weight[k])
            pres.append(p)
        x = torch.stack(tokens, 1)  # (B, M, L, d)
        pres_t = torch.stack(pres, 1)  # (B, M, L)
        # An item with no feature at all still needs one visible token: its zero inputs.
        pres_t = pres_t | ~pres_t.any(1, keepdim=True)
        hidden = (~pres_t) | padding.unsqueeze(1)
        m_count = len(self.modalities)
        x = self.emb_dropout(self.emb_norm(x.reshape(b, m_count * length, self.d_model)))
        flat_hidden = hidden.reshape(b, m_count * length)
        # Hidden tokens may hold garbage (padding); zeroing keeps NaN/inf out of the values.
        x = x.masked_fill(flat_hidden.unsqueeze(-1), 0.0)
        attn_mask = None
        if causal:
            tok = steps.repeat(m_count)
            attn_mask = tok.unsqueeze(0) > tok.unsqueeze(1)
        # is_causal given: left to guess, the encoder compares the mask on the device and syncs every step.
        h = self.transformer(x, mask=attn_mask, src_key_padding_mask=flat_hidden, is_causal=False)
        h = h.reshape(b, m_count, length, self.d_model)
        out = torch.stack([self.out_proj[m](h[:, k]) for k, m in enumerate(self.modalities)], 1)
        out = out.masked_fill(~pres_t.unsqueeze(-1), float("-inf")).amax(1)
        return out.masked_fill(padding.unsqueeze(-1), 0.0)
