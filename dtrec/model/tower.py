"""`DualTower`: the item tower and the user tower over one (or two) `FusionEncoder`s.

Item tower = the encoder on a length-1 sequence; user tower = the encoder on a
history, read at the last real position (causal) or at an appended learned
[MASK] query position (Cloze). Items are known only by their features, so the
model holds no per-item parameters and transfers to any catalog whose features
come from the same encoder; the one exception is the opt-in item-ID table
(`ItemIds`, `ModelConfig.id_rows`), which ties a checkpoint to its catalog.
Saved with `PyTorchModelHubMixin` as `config.json` + `model.safetensors`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin, hf_hub_download
from safetensors.torch import load_file
from torch import Tensor, nn

from dtrec.config import ModelConfig
from dtrec.encoders.registry import same_encoder
from dtrec.features import Features, content_vectors
from dtrec.model.adaptor import AdaptorItemEncoder, HistoryCorrection, SequenceEncoder
from dtrec.model.content import ContentBias, content_scores
from dtrec.model.fusion import FusionEncoder, canonical_order
from dtrec.model.itemids import ItemIds
from dtrec.model.repeat import RepeatBias, history_offsets
from dtrec.modelcard import checkpoint_card
from dtrec.sequences import history_batch

class FeatureMismatchError(ValueError):
    """Features come from another encoder (or other dims) than the checkpoint was trained on."""


class CheckpointError(ValueError):
    """A checkpoint's weights do not fit the model its config describes."""


class DualTower(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="dtrec",
    tags=["recommendation", "sequential-recommendation", "multimodal", "two-tower"],
):
    """Item tower + user tower; scores are cosines between their L2-normalised outputs."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config = ModelConfig.from_dict(config)
        if not config.modality_dims:
            raise ValueError("ModelConfig.modality_dims is empty: set it from the features (Features.dims)")
        self.config = config
        self._hub_mixin_config = config
        c = config
        # Registered only when asked for, so a checkpoint without it loads unchanged.
        self.repeat_bias = RepeatBias(c.max_len) if c.repeat_bias else None
        self.content_bias = ContentBias(c.content_lags) if c.content_lags else None
        self.item_ids = ItemIds(c.id_rows, c.d_model) if c.id_rows else None
        self._ids_checked: tuple | None = None  # the features last found to be the IDs' catalog
        if c.tower == "adaptor":
            self.item_adaptor = AdaptorItemEncoder(c.modality_dims, canonical_order(c.modality_dims), c.d_model,
                                                   c.n_experts, c.adaptor_dropout)
            self.sequence_encoder = SequenceEncoder(c.d_model, c.n_layers, c.n_heads, c.d_ff, c.dropout,
                                                    c.emb_dropout, max_positions=c.max_len + 1)
            # Separate towers: history items get a learned correction on top of the shared adaptor, so
            # the user vector is free to leave the neighbourhood of the last item's candidate embedding.
            self.history_correction = None if c.share_towers else HistoryCorrection(
                c.modality_dims, canonical_order(c.modality_dims), c.d_model)
            # The user vector sits near the last item's own embedding, so that item ranks first though it is
            # almost never the next one (the echo). A learned weight on minus that embedding lets training
            # push it down; at 0 it is the plain model. Registered only when asked for.
            self.last_item_weight = nn.Parameter(torch.zeros(())) if c.subtract_last else None
            return
        self.user_encoder = self._make_encoder()
        # Registered only when separate, so a shared checkpoint holds each weight once.
        self.separate_item_encoder = None if config.share_towers else self._make_encoder()

    def _make_encoder(self) -> FusionEncoder:
        c = self.config
        return FusionEncoder(c.modality_dims, c.d_model, c.n_layers, c.n_heads, c.d_ff, c.dropout,
                             c.emb_dropout, max_positions=c.max_len + 1,
                             reverse_positions=c.reverse_positions)

    @property
    def item_encoder(self) -> FusionEncoder:
        """The encoder of the item tower (the user encoder when towers are shared)."""
        return self.separate_item_encoder if self.separate_item_encoder is not None else self.user_encoder

    @property
    def modalities(self) -> tuple[str, ...]:
        return canonical_order(self.config.modality_dims)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def fit_feature_norm(self, features: Features, exclude: list[int] | None = None) -> None:
        """Fit the adaptor's feature standardisation on a training catalog, rows `exclude` (cold items)
        left out; a no-op for the fusion tower."""
        self.fit_feature_norm_over([(features, exclude)])

    def fit_feature_norm_over(self, catalogs: list[tuple[Features, list[int] | None]]) -> None:
        """`fit_feature_norm` on several catalogs at once (multi-domain pretraining): the statistics of all
        their rows that have the modality, each catalog's `exclude` rows left out."""
        if self.config.tower != "adaptor":
            return
        values: dict[str, Tensor] = {}
        for m in self.modalities:
            rows = []
            for features, exclude in catalogs:
                keep = features.present[m].cpu().clone()
                if exclude:
                    keep[torch.as_tensor(exclude, dtype=torch.long)] = False
                rows.append(features.values[m][keep.to(features.values[m].device)].cpu())
            values[m] = torch.cat(rows)
        self.item_adaptor.fit_norm(values, {m: torch.ones(len(v), dtype=torch.bool) for m, v in values.items()})

    def _encode_history(self, idx: Tensor, padding: Tensor, table: Features, masked: Tensor | None) -> Tensor:
        """User-encoder outputs (B, L, d) for item rows `idx` (B, L) of `table`, gathered on the table's device."""
        causal = self.config.objective == "causal"
        if self.config.tower == "adaptor":
            # Each distinct item goes through the adaptor once, however often the batch holds it.
            uniq, inverse = torch.unique(idx, return_inverse=True)
            values = {m: table.values[m][uniq].to(self.device) for m in self.modalities}
            present = {m: table.present[m][uniq].to(self.device) for m in self.modalities}
            emb = self.item_adaptor(values, present)
            if self.item_ids is not None:
                emb = emb + self.item_ids(uniq.to(self.device))
            tokens = emb
            if self.history_correction is not None:
                tokens = emb + self.history_correction(self.item_adaptor.standardise(values), present)
            inverse = inverse.to(self.device)
            h = self.sequence_encoder(tokens[inverse], padding, masked=masked, causal=causal)
            if self.last_item_weight is not None:  # each causal position reads the item it sits on
                h = F.normalize(h, dim=-1) - self.last_item_weight * F.normalize(emb, dim=-1)[inverse]
            return h
        values = {m: table.values[m][idx].to(self.device) for m in self.modalities}
        present = {m: table.present[m][idx].to(self.device) & ~padding for m in self.modalities}
        return self.user_encoder(values, present, padding, masked=masked, causal=causal)

    # ------------------------------------------------------------------ training-side forward passes
    def encode_items(self, values: dict[str, Tensor], present: dict[str, Tensor],
                     rows: Tensor | None = None) -> Tensor:
        """Item-tower outputs (N, d), not normalised, for per-item `values[m]` (N, D_m); with item IDs, `rows`
        (N,) are the items' catalog rows (None: content only, as for a new item)."""
        if self.config.tower == "adaptor":
            emb = self.item_adaptor(values, present)
            if self.item_ids is not None and rows is not None:
                emb = emb + self.item_ids(rows.to(emb.device))
            return emb
        n = next(iter(values.values())).shape[0]
        pad = torch.zeros(n, 1, dtype=torch.bool, device=self.device)
        out = self.item_encoder(
            {m: values[m].unsqueeze(1) for m in self.modalities},
            {m: present[m].unsqueeze(1) for m in self.modalities},
            pad,
        )
        return out[:, 0]

    def encode_sequences(
        self, items: Tensor, padding: Tensor, table: Features, masked: Tensor | None = None
    ) -> Tensor:
        """User-encoder outputs (B, L, d) for item indices `items` (B, L; padding holds any index).

        `table` gives the features of every index; the attention is causal for the
        causal objective and bidirectional for Cloze.
        """
        return self._encode_history(items.clamp(min=0), padding, table, masked)

    # ------------------------------------------------------------------ serving API (docs/architecture.md)
    def check_features(self, features: Features, ids: bool = True) -> None:
        """Raise `FeatureMismatchError` when `features` come from another encoder or dims, or (with item IDs and
        `ids`) when their first rows are not the catalog the IDs were trained on."""
        c = self.config
        # Features may hold more modalities than the model reads (a text-only model over a catalog with images).
        dims = {m: features.dims.get(m) for m in c.modality_dims}
        if not same_encoder(features.encoder, c.encoder) or dims != c.modality_dims:
            raise FeatureMismatchError(
                f"checkpoint expects features of encoder {c.encoder!r} with dims {c.modality_dims}, "
                f"got {features.encoder!r} with dims {features.dims}; extract features with the checkpoint's encoder"
            )
        if ids and self.item_ids is not None:
            key = (len(features), *((m, features.values[m].data_ptr(), features.values[m]._version)
                                    for m in features.modalities))
            if key != self._ids_checked:
                if not self.item_ids.matches(features):
                    raise FeatureMismatchError(
                        f"this checkpoint learned item IDs for the {self.item_ids.rows} items of the catalog it was "
                        "fine-tuned on, and these features are another catalog (or another row order): it scores "
                        "that catalog only; fine-tune without --item-ids for a model that transfers")
                self._ids_checked = key

    def bind_item_ids(self, features: Features) -> None:
        """Record `features` as the catalog of the item-ID table (a no-op without one)."""
        if self.item_ids is not None:
            self.item_ids.bind(features)
            self._ids_checked = None

    @torch.no_grad()
    def item_embeddings(self, features: Features, batch_size: int = 4096, ids: bool = True) -> Tensor:
        """L2-normalised item-tower embeddings (N, d) of every row of `features`, on the model's device.

        With item IDs, row i of `features` is catalog row i unless `ids` is False (items outside the catalog,
        such as one upload on its own: content only)."""
        self.check_features(features, ids=ids)
        out = []
        for start in range(0, len(features), batch_size):
            sl = slice(start, start + batch_size)
            vals = {m: features.values[m][sl].to(self.device) for m in self.modalities}
            pres = {m: features.present[m][sl].to(self.device) for m in self.modalities}
            rows = torch.arange(start, min(start + batch_size, len(features)), device=self.device) if ids else None
            out.append(F.normalize(self.encode_items(vals, pres, rows).float(), dim=-1))
        if not out:
            return torch.zeros(0, self.config.d_model, device=self.device)
        return torch.cat(out)

    @torch.no_grad()
    def user_embeddings(self, histories: list[list[int]], features: Features) -> Tensor:
        """L2-normalised next-item predictions (B, d) for histories of row indices of `features`."""
        self.check_features(features)
        batch = history_batch(histories, self.config.max_len, self.config.objective)
        idx = batch["items"].clamp(min=0)
        n = len(features)
        if idx.numel() and int(idx.max()) >= n:
            raise ValueError(f"a history holds item index {int(idx.max())}, but the features have {n} rows")
        # Gather on the features' device, so a large table never has to move.
        padding = batch["padding"].to(self.device)
        masked = batch["masked"].to(self.device) if batch["masked"] is not None else None
        h = self._encode_history(idx.to(features.values[self.modalities[0]].device), padding, features, masked)
        read = batch["read"].to(self.device)
        out = h[torch.arange(h.shape[0], device=self.device), read]
        return F.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def history_offsets(self, histories: list[list[int]], num_items: int) -> Tensor | None:
        """The repeat term's score offsets (B, num_items) of every item of each whole history, or None without one."""
        if self.repeat_bias is None:
            return None
        return history_offsets(self.repeat_bias.values().float(), histories, num_items)

    def content_vectors(self, features: Features) -> Tensor:
        """The frozen features' own unit vectors (N, D) of every row of `features`, in the modalities the model
        reads: the space the content term and content kNN compare items in. A modality no row has is left out
        (its columns would be zeros throughout: no cosine changes, and every product is cheaper)."""
        mods = [m for m in self.modalities if bool(features.present[m].any())] or list(self.modalities)
        return content_vectors({m: features.values[m] for m in mods}, {m: features.present[m] for m in mods})

    @torch.no_grad()
    def content_offsets(self, histories: list[list[int]], features: Features,
                        content: Tensor | None = None) -> Tensor | None:
        """The content term's score offsets (B, N) of every row of `features` for each history, or None without
        one; `content` are `content_vectors(features)` when the caller keeps them."""
        if self.content_bias is None:
            return None
        if content is None:
            content = self.content_vectors(features)
        content = content.to(self.device).float()
        return content_scores(self.content_bias.values().float(), histories, content)

    @torch.no_grad()
    def scores(self, histories: list[list[int]], features: Features, items: Tensor,
               content: Tensor | None = None) -> Tensor:
        """Scores (B, N) of every item for each history: the cosine of the two towers plus the repeat and
        content terms.

        `items` are `item_embeddings(features)`, computed once by the caller, and so may be `content`
        (`content_vectors(features)`, used only with a content term).
        """
        out = self.user_embeddings(histories, features) @ items.T
        for offsets in (self.history_offsets(histories, items.shape[0]),
                        self.content_offsets(histories, features, content)):
            if offsets is not None:
                out = out + offsets
        return out

    @torch.no_grad()
    def scorer(self, features: Features, item_batch_size: int = 4096) -> Callable[[list[list[int]]], Tensor]:
        """`(histories) -> scores (B, N)` over every row of `features` (float32). The item embeddings and content
        vectors are computed once, here: a model changed afterwards needs a new scorer."""
        items = self.item_embeddings(features, batch_size=item_batch_size)
        content = self.content_vectors(features) if self.content_bias is not None else None
        return lambda histories: self.scores(histories, features, items, content).float()  # scores: no_grad

    # ------------------------------------------------------------------ loading
    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The card `save_pretrained` writes beside the weights: what this checkpoint is and reads."""
        c = self.config
        dims = ", ".join(f"{m} {d}" for m, d in c.modality_dims.items())
        return checkpoint_card(
            "dtrec two-tower checkpoint",
            f"The item and user towers of dtrec ({c.tower} towers, d_model {c.d_model}, {c.n_layers} layers, "
            f"window {c.max_len}), reading `{c.encoder}` features ({dims}); "
            + (f"with learned IDs for the {c.id_rows} items of the catalog it was fine-tuned on, so it scores that "
               "catalog (and new items, by content) only. " if c.id_rows else
               "no item IDs, so it scores any catalog whose items have those features. ")
            + "`dtrec evaluate --checkpoint FOLDER --data DIR` evaluates it, "
            "`dtrec.model.DualTower.from_pretrained(FOLDER)` loads it.",
            ["recommendation", "sequential-recommendation", "multimodal", "two-tower"])

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: Any,
        force_download: bool,
        local_files_only: bool,
        token: Any,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> "DualTower":
        """Load `model.safetensors` with a strict key and shape check."""
        if "config" not in model_kwargs:
            raise FileNotFoundError(f"{model_id} has no config.json: it is not a DualTower checkpoint")
        model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            path = os.path.join(model_id, "model.safetensors")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing: the checkpoint has no weights")
        else:
            path = hf_hub_download(repo_id=model_id, filename="model.safetensors", revision=revision,
                                   cache_dir=cache_dir, force_download=force_download, token=token,
                                   local_files_only=local_files_only)
        state = load_file(path, device=str(map_location))
        load_state_checked(model, state, strict=strict, source=model_id)
        model.eval()
        return model


def load_state_checked(model: nn.Module, state: dict[str, Tensor], strict: bool = True, source: str = "") -> None:
    """`load_state_dict` that reports missing, unexpected and mis-shaped keys in one sentence."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if shapes or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise CheckpointError(f"checkpoint {source} does not fit the model its config describes: {'; '.join(parts)}")
    model.load_state_dict(state, strict=strict)
