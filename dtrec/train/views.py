"""Item-level multi-modal contrastive views: the self-supervised loss that aligns an item's modalities.

Each item is seen in three views, image-only (v), text-only (t) and image+text (vt),
each encoded twice by the item tower with dropout as the only augmentation; the loss
averages symmetric InfoNCE over (v, v'), (v, t), (t, t'), (vt, vt'), each over the
items that have what the pair needs, the other items of the batch (gathered from
every process under DDP) being the negatives. A catalog with one modality has one
view, (x, x'). Pretraining trains on it alone or beside the sequence loss
(dtrec.train.pretrain); fine-tuning can add it (`FinetuneConfig.item_weight`) so the
item tower keeps what the encoders know about content (docs/model.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dtrec.data.catalog import Dataset
from dtrec.features import Features
from dtrec.model.losses import info_nce
from dtrec.model.tower import DualTower, FeatureMismatchError, same_encoder
from dtrec.train import distributed as D


def views_and_pairs(modalities: tuple[str, ...], pairs: str = "") -> tuple[dict[str, tuple[str, ...]],
                                                                           list[tuple[str, str]]]:
    """The views (name -> visible modalities) and the view pairs of the contrastive loss.

    `pairs` ("t-vt,vt-vt") picks other pairs of the text + image views; "" gives the paper's four."""
    if set(modalities) >= {"text", "image"}:
        views = {"v": ("image",), "t": ("text",), "vt": ("text", "image")}
        chosen = [("v", "v"), ("v", "t"), ("t", "t"), ("vt", "vt")]
        if pairs:
            chosen = [tuple(p.strip().split("-", 1)) for p in pairs.split(",") if p.strip()]
            bad = [("-".join(p)) for p in chosen if len(p) != 2 or not set(p) <= set(views)]
            if bad or not chosen:
                raise ValueError(f"view pairs are two of {', '.join(views)} joined by '-', "
                                 f"not {', '.join(bad) or pairs!r}")
        # only the views some pair needs are encoded
        return {n: m for n, m in views.items() if any(n in p for p in chosen)}, chosen
    return {"x": tuple(modalities)}, [("x", "x")]


class ItemViewObjective(nn.Module):
    """Multi-view contrastive loss of a batch of items, as one module for DDP."""

    def __init__(self, model: DualTower, info: D.DistInfo | None = None, pairs: str = ""):
        super().__init__()
        self.model = model
        self.info = info or D.DistInfo()
        self.views, self.pairs = views_and_pairs(model.modalities, pairs)

    def forward(self, values: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(mean loss, per-pair losses) for items `values[m]` (B, D_m), `present[m]` (B,)."""
        model = self.model
        b = next(iter(values.values())).shape[0]
        names = list(self.views)
        cat_v: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
        cat_p: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
        for name in names:
            for _ in range(2):  # two dropout draws of each view
                for m in model.modalities:
                    keep = present[m] & (m in self.views[name])
                    cat_v[m].append(values[m] * keep.unsqueeze(-1).to(values[m].dtype))
                    cat_p[m].append(keep)
        emb = model.encode_items({m: torch.cat(v) for m, v in cat_v.items()},
                                 {m: torch.cat(p) for m, p in cat_p.items()})
        chunks = emb.split(b)
        first = {n: chunks[2 * i] for i, n in enumerate(names)}
        second = {n: chunks[2 * i + 1] for i, n in enumerate(names)}
        has = {n: torch.stack([present[m] for m in mods], 0) for n, mods in self.views.items()}
        ok = {n: (h.all(0) if n != "vt" else h.any(0)) for n, h in has.items()}
        if "x" in ok:
            ok["x"] = has["x"].any(0)
        losses, weights = [], []
        for a, c in self.pairs:
            za = D.all_gather_with_grad(first[a], self.info)
            zc = D.all_gather_with_grad(second[c] if a == c else first[c], self.info)
            valid = D.all_gather_no_grad(ok[a] & ok[c], self.info)
            losses.append(info_nce(za, zc, model.config.temperature, valid))
            weights.append((valid.sum() > 1).float())
        stacked = torch.stack(losses)
        w = torch.stack(weights)
        # A pair with fewer than two valid items has no negatives and no signal: leave it out.
        return (stacked * w).sum() / w.sum().clamp(min=1.0), stacked.detach()


def check_sources(sources: list[tuple[Dataset | None, Features]]) -> None:
    """Raise unless there is a source and all of them share one encoder and its dims."""
    if not sources:
        raise ValueError("pretraining needs at least one data set")
    enc, dims = sources[0][1].encoder, sources[0][1].dims
    for _, f in sources:
        if not same_encoder(f.encoder, enc) or f.dims != dims:
            raise FeatureMismatchError(
                f"all pretraining data must share one encoder: {enc!r} {dims} vs {f.encoder!r} {f.dims}"
            )


def multimodal_table(sources: list[tuple[Dataset | None, Features]]) -> Features:
    """The items of all sources that have every modality (cold items left out), stacked; all items when none has."""
    check_sources(sources)
    parts = []
    for ds, f in sources:
        keep = torch.ones(len(f), dtype=torch.bool)
        for m in f.modalities:
            keep &= f.present[m].cpu()
        if ds is not None and ds.cold_items:
            keep[torch.as_tensor(ds.cold_items, dtype=torch.long)] = False
        parts.append(f.subset(keep.nonzero().flatten()))
    if sum(len(p) for p in parts) < 2:
        table, rows = item_table(sources)
        return table.subset(rows)
    return Features(parts[0].encoder, {m: torch.cat([p.values[m] for p in parts]) for m in parts[0].modalities},
                    {m: torch.cat([p.present[m] for p in parts]) for m in parts[0].modalities})


def item_table(sources: list[tuple[Dataset | None, Features]]) -> tuple[Features, list[int]]:
    """All sources' features stacked into one table, and the rows to train on (cold items left out)."""
    check_sources(sources)
    enc, dims = sources[0][1].encoder, sources[0][1].dims
    values: dict[str, list[Tensor]] = {m: [] for m in dims}
    present: dict[str, list[Tensor]] = {m: [] for m in dims}
    rows: list[int] = []
    offset = 0
    for ds, f in sources:
        cold = set(ds.cold_items) if ds is not None else set()
        rows.extend(offset + i for i in range(len(f)) if i not in cold)
        for m in dims:
            values[m].append(f.values[m])
            present[m].append(f.present[m])
        offset += len(f)
    table = Features(enc, {m: torch.cat(v) for m, v in values.items()},
                     {m: torch.cat(p) for m, p in present.items()})
    return table, rows
