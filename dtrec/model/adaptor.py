"""The adaptor towers: UniSRec's item adaptor and a SASRec-style user encoder over item embeddings.

Item tower: each modality's frozen features are standardised with statistics fitted
on the training catalog (`FeatureNorm`, stored in the checkpoint so an uploaded
item gets the same transform), then mapped by a mixture of parametric-whitening
experts (`MoEAdaptor`, Hou et al., "Towards Universal Sequence Representation
Learning for Recommender Systems", KDD 2022); an item's embedding is the mean over
the modalities it has. The map starts close to linear in the features, so the
tower keeps the encoders' neighbourhoods instead of having to rebuild them.

User tower (`SequenceEncoder`): one token per history item — its item-tower
embedding plus a position counted back from the most recent item — through
Transformer blocks, read at the last item (causal) or at an appended [MASK] query
(Cloze). Item and user towers share only the adaptor.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dtrec.model.dropout import use_fast_dropout


class FeatureNorm(nn.Module):
    """Per-dimension standardisation of one modality's features; statistics are buffers saved with the model."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def fit(self, values: Tensor, present: Tensor) -> None:
        """Mean and standard deviation over the rows that have this modality (unchanged when none has)."""
        rows = values[present.bool().to(values.device)].float().to(self.mean.device)
        if rows.shape[0] < 2:
            return
        self.mean.copy_(rows.mean(0))
        self.scale.copy_(rows.std(0).clamp(min=1e-6))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.scale


class MoEAdaptor(nn.Module):
    """Mixture of parametric-whitening experts: `sum_k g_k(x) (x - b_k) W_k`, gates softmax(x W_g)."""

    def __init__(self, d_in: int, d_out: int, n_experts: int = 8, dropout: float = 0.2):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_experts, d_in))
        self.experts = nn.ModuleList(nn.Linear(d_in, d_out, bias=False) for _ in range(n_experts))
        self.gate = nn.Linear(d_in, n_experts, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_in) -> (..., d_out)."""
        x = self.dropout(x)
        gates = torch.softmax(self.gate(x), dim=-1)  # (..., K)
        outs = torch.stack([e(x - b) for e, b in zip(self.experts, self.bias)], dim=-2)  # (..., K, d_out)
        return (gates.unsqueeze(-1) * outs).sum(-2)


def mean_over_present(parts: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
    """Per-item mean of `parts[m]` (..., d) over the modalities the item has; zeros when it has none."""
    total = count = None
    for m, e in parts.items():
        p = present[m].unsqueeze(-1).to(e.dtype)
        total = e * p if total is None else total + e * p
        count = p if count is None else count + p
    return total / count.clamp(min=1.0)


class AdaptorItemEncoder(nn.Module):
    """Item embeddings (N, d) from per-modality features: standardise, adapt, mean over present modalities."""

    def __init__(self, modality_dims: dict[str, int], modalities: tuple[str, ...], d_model: int,
                 n_experts: int = 8, dropout: float = 0.2):
        super().__init__()
        self.modalities = modalities
        self.d_model = d_model
        self.norm = nn.ModuleDict({m: FeatureNorm(modality_dims[m]) for m in modalities})
        self.adaptor = nn.ModuleDict({m: MoEAdaptor(modality_dims[m], d_model, n_experts, dropout)
                                      for m in modalities})
        use_fast_dropout(self)

    def standardise(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each modality's features after the fitted standardisation."""
        return {m: self.norm[m](values[m].to(self.norm[m].mean.dtype)) for m in self.modalities}

    def fit_norm(self, values: dict[str, Tensor], present: dict[str, Tensor]) -> None:
        """Fit every modality's standardisation on a training catalog's features."""
        for m in self.modalities:
            self.norm[m].fit(values[m], present[m])

    def forward(self, values: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        """`values[m]` (..., D_m), `present[m]` (...) -> (..., d); an item with no modality gets zeros."""
        # A modality no item of the batch has adds nothing to the mean: skip its experts (a text-only
        # catalog would otherwise pay for the image adaptor, the widest one, on placeholder rows).
        mods = [m for m in self.modalities if bool(present[m].any())]
        if not mods:
            shape = next(iter(present.values())).shape
            return self.norm[self.modalities[0]].mean.new_zeros(*shape, self.d_model)
        parts = {m: self.adaptor[m](self.norm[m](values[m].to(self.norm[m].mean.dtype))) for m in mods}
        return mean_over_present(parts, present)


class HistoryCorrection(nn.Module):
    """What separate towers add to a history item's embedding: a linear map of its standardised
    features, zero at initialisation, averaged over the modalities the item has.

    Starting from zero, the user tower first reads history items exactly as the item tower
    embeds candidates (the shared towers' similarity signal) and learns only the difference it
    needs, e.g. to stop echoing the last item.
    """

    def __init__(self, modality_dims: dict[str, int], modalities: tuple[str, ...], d_model: int):
        super().__init__()
        self.modalities = modalities
        self.proj = nn.ModuleDict({m: nn.Linear(modality_dims[m], d_model, bias=False) for m in modalities})
        for lin in self.proj.values():
            nn.init.zeros_(lin.weight)

    def forward(self, standardised: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        """Standardised `values[m]` (..., D_m), `present[m]` (...) -> the correction (..., d)."""
        return mean_over_present({m: self.proj[m](standardised[m]) for m in self.modalities}, present)


class SequenceEncoder(nn.Module):
    """Transformer over one token per history item (its embedding + a reversed position), SASRec-style."""

    reverse_positions = True  # always: position 0 is the last item

    def __init__(self, d_model: int, n_layers: int, n_heads: int, d_ff: int, dropout: float, emb_dropout: float,
                 max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        self.position = nn.Embedding(max_positions, d_model)
        self.mask_token = nn.Parameter(torch.zeros(d_model))
        self.emb_norm = nn.LayerNorm(d_model)
        self.emb_dropout = nn.Dropout(emb_dropout)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, activation="gelu", batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        nn.init.trunc_normal_(self.position.weight, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        use_fast_dropout(self)

    def forward(self, items: Tensor, padding: Tensor, masked: Tensor | None = None, causal: bool = True) -> Tensor:
        """Item embeddings (B, L, d) of right-padded histories -> hidden states (B, L, d); padding rows are 0."""
        b, length, _ = items.shape
        if length > self.max_positions:
            raise ValueError(f"sequence of {length} positions exceeds the position table ({self.max_positions})")
        steps = torch.arange(length, device=items.device)
        pos_id = ((~padding).sum(1, keepdim=True) - 1 - steps).clamp(min=0)
        x = items
        if masked is not None:
            x = torch.where(masked.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = self.emb_dropout(self.emb_norm(x + self.position(pos_id)))
        x = x.masked_fill(padding.unsqueeze(-1), 0.0)
        attn_mask = steps.unsqueeze(0) > steps.unsqueeze(1) if causal else None
        h = self.transformer(x, mask=attn_mask, src_key_padding_mask=padding, is_causal=False)
        return h.masked_fill(padding.unsqueeze(-1), 0.0)
