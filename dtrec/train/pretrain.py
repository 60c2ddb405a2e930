"""Self-supervised multi-modal pretraining of the item tower (docs/design.md "The model").

Items only, from one or more catalogs that share an encoder (cold items left
out). Each item is seen in three views, image-only (v), text-only (t) and
image+text (vt), each encoded twice with dropout as the only augmentation; the
loss averages symmetric InfoNCE over (v, v'), (v, t), (t, t'), (vt, vt'), each
over the items that have what the pair needs. Negatives are the other items of
the batch, gathered from every process under DDP. Writes a DualTower
checkpoint into OUT (loadable by `from_pretrained`, usable as `finetune --init`),
`metrics.jsonl` and `train_config.json`, through `dtrec.train.loop.fit`
(`PretrainTask`: no selection, every epoch's model is kept).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from dtrec.config import PretrainConfig
from dtrec.data.catalog import Dataset
from dtrec.features import Features
from dtrec.model.losses import cross_modal_accuracy, info_nce
from dtrec.model.tower import DualTower, FeatureMismatchError, same_encoder
from dtrec.train import distributed as D
from dtrec.train.loop import FitConfig, Task, fit, seed_everything, train_step


def views_and_pairs(modalities: tuple[str, ...]) -> tuple[dict[str, tuple[str, ...]], list[tuple[str, str]]]:
    """The views (name -> visible modalities) and the view pairs of the contrastive loss."""
    if set(modalities) >= {"text", "image"}:
        return ({"v": ("image",), "t": ("text",), "vt": ("text", "image")},
                [("v", "v"), ("v", "t"), ("t", "t"), ("vt", "vt")])
    return {"x": tuple(modalities)}, [("x", "x")]


class PretrainObjective(nn.Module):
    """Multi-view contrastive loss of a batch of items, as one module for DDP."""

    def __init__(self, model: DualTower, info: D.DistInfo | None = None):
        super().__init__()
        self.model = model
        self.info = info or D.DistInfo()
        self.views, self.pairs = views_and_pairs(model.modalities)

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


def item_table(sources: list[tuple[Dataset | None, Features]]) -> tuple[Features, list[int]]:
    """All sources' features stacked into one table, and the rows to train on (cold items left out)."""
    if not sources:
        raise ValueError("pretraining needs at least one data set")
    enc, dims = sources[0][1].encoder, sources[0][1].dims
    values: dict[str, list[Tensor]] = {m: [] for m in dims}
    present: dict[str, list[Tensor]] = {m: [] for m in dims}
    rows: list[int] = []
    offset = 0
    for ds, f in sources:
        if not same_encoder(f.encoder, enc) or f.dims != dims:
            raise FeatureMismatchError(
                f"all pretraining data must share one encoder: {enc!r} {dims} vs {f.encoder!r} {f.dims}"
            )
        cold = set(ds.cold_items) if ds is not None else set()
        rows.extend(offset + i for i in range(len(f)) if i not in cold)
        for m in dims:
            values[m].append(f.values[m])
            present[m].append(f.present[m])
        offset += len(f)
    table = Features(enc, {m: torch.cat(v) for m, v in values.items()},
                     {m: torch.cat(p) for m, p in present.items()})
    return table, rows


def cross_modal_eval(model: DualTower, table: Features, rows: list[int], limit: int = 1000) -> dict[str, float]:
    """Text -> image and image -> text top-1 retrieval accuracy among up to `limit` items with both."""
    if not {"text", "image"} <= set(model.modalities):
        return {}
    rows_t = torch.tensor(rows, device=table.values["text"].device)
    idx = rows_t[(table.present["text"] & table.present["image"])[rows_t]][:limit]
    if idx.numel() < 2:
        return {}
    was = model.training
    model.eval()
    with torch.no_grad():
        vals = {m: table.values[m][idx] for m in model.modalities}
        only = {m: {k: (table.present[k][idx] & (k == m)) for k in model.modalities} for m in model.modalities}
        t = model.encode_items({k: vals[k] * only["text"][k].unsqueeze(-1) for k in vals}, only["text"])
        v = model.encode_items({k: vals[k] * only["image"][k].unsqueeze(-1) for k in vals}, only["image"])
    model.train(was)
    return {"text_to_image@1": cross_modal_accuracy(t, v), "image_to_text@1": cross_modal_accuracy(v, t),
            "n_eval": int(idx.numel())}


class PretrainTask(Task):
    """Pretraining as a `fit` task: batches of item rows, the multi-view loss, cross-modal retrieval as validation."""

    name = "pretrain"

    def __init__(self, model: DualTower, trainer: nn.Module, objective: PretrainObjective,
                 optimizer: torch.optim.Optimizer, loader: DataLoader, table: Features, rows: list[int],
                 config: PretrainConfig, device: torch.device, out: Path):
        self.model, self.trainer, self.objective, self.optimizer, self.loader = (
            model, trainer, objective, optimizer, loader)
        self.table, self.rows, self.config, self.device, self.out = table, rows, config, device, out
        self.amp = config.amp and device.type == "cuda"
        self.parts = torch.zeros(len(objective.pairs), device=device)

    def batches(self, epoch: int) -> DataLoader:
        """The loader reshuffled for `epoch`; the per-pair loss sums restart."""
        self.loader.sampler.set_epoch(epoch)
        self.parts = torch.zeros(len(self.objective.pairs), device=self.device)
        return self.loader

    def step(self, idx: Tensor) -> Tensor:
        """One update on the items of rows `idx` of the table."""
        idx = idx.to(self.device, non_blocking=True)
        vals = {m: self.table.values[m][idx] for m in self.model.modalities}
        pres = {m: self.table.present[m][idx] for m in self.model.modalities}
        loss, per_pair = train_step(self.model, self.optimizer, lambda: self.trainer(vals, pres), self.device.type,
                                    amp=self.amp, grad_clip=self.config.grad_clip)
        self.parts += per_pair
        return loss

    def epoch_metrics(self, steps: int) -> dict[str, float]:
        """The epoch's mean loss of each view pair."""
        n = max(steps, 1)
        return {f"loss_{a}_{c}": float(x) for (a, c), x in zip(self.objective.pairs, (self.parts / n).tolist())}

    def validate(self) -> dict[str, float]:
        """Text -> image and image -> text retrieval among the training items (`cross_modal_eval`)."""
        return cross_modal_eval(self.model, self.table, self.rows)

    def save_checkpoint(self) -> None:
        """The current model into OUT."""
        self.model.save_pretrained(self.out)


def pretrain(
    sources: list[tuple[Dataset | None, Features]],
    config: PretrainConfig,
    out: str | Path,
    progress: bool = True,
    record: dict | None = None,
) -> dict[str, Any]:
    """Pretrain a DualTower on the items of `sources`; returns the last epoch's metrics."""
    info = D.setup(config.device)
    try:
        return _pretrain(sources, config, Path(out), progress, record or {}, info)
    finally:
        D.teardown(info)


def _pretrain(sources, config: PretrainConfig, out: Path, progress: bool, record: dict,
              info: D.DistInfo) -> dict[str, Any]:
    if config.batch_size % info.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {info.world_size} processes")
    seed_everything(config.seed)
    device = info.device
    table, rows = item_table(sources)
    if len(rows) < 2:
        raise ValueError("pretraining needs at least two items")
    model_cfg = dataclasses.replace(config.model, encoder=table.encoder, modality_dims=table.dims)
    config = dataclasses.replace(config, model=model_cfg)
    model = DualTower(model_cfg).to(device)
    kept = set(rows)
    model.fit_feature_norm(table, exclude=[i for i in range(len(table)) if i not in kept])
    table = table.to(device)
    objective = PretrainObjective(model, info)
    trainer: nn.Module = objective
    if info.enabled:
        trainer = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    sampler = DistributedSampler(rows, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed)
    loader = DataLoader(rows, batch_size=config.batch_size // info.world_size, sampler=sampler,
                        collate_fn=lambda b: torch.tensor(b, dtype=torch.long))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    task = PretrainTask(model, trainer, objective, optimizer, loader, table, rows, config, device, out)
    loop = FitConfig(epochs=config.epochs, max_steps=config.max_steps, metric=None, prefix="",
                     log_every=config.log_every, headline=("text_to_image@1", "text->image@1", ".3f"))
    run_record = dict(config=config, seed=config.seed, world_size=info.world_size, device=str(device),
                      items=len(rows), **record)
    rows_out = fit(task, loop, out=out, info=info, progress=progress, record=run_record).rows
    return rows_out[-1] if rows_out else {}
