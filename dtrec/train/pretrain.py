"""Self-supervised multi-modal pretraining, over items and optionally over sequences from many domains
(docs/design.md "The model"; docs/pretraining.md).

Items, from one or more catalogs that share an encoder (cold items left out): the
item-level multi-modal contrastive views of `dtrec.train.views`, negatives the
other items of the batch.

Sequences (`PretrainConfig.sequences`), as UniSRec pretrains across domains: every
source's training histories also teach next-item prediction, the fine-tuning
objective (`FinetuneObjective`), each batch drawn from one source and scored
against that source's own items, so that no domain's items are another's easy
negatives. The item views then run beside it on the items that have every modality
(the image-bearing part that aligns text with image; all items when none has).
A text-only source is no special case: an absent modality takes no part in an
item's embedding nor in the feature statistics.

Writes a DualTower checkpoint into OUT (loadable by `from_pretrained`, usable as
`finetune --init` and zero-shot), `metrics.jsonl` and `train_config.json`, through
`dtrec.train.loop.fit`. Items only: `PretrainTask`, every epoch's model kept.
Sequences: `SequencePretrainTask`, the best epoch by mean validation NDCG@10 over
the sources kept, resumable from `OUT/last/`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from dtrec.config import PretrainConfig, resolve_negatives
from dtrec.data.catalog import Dataset
from dtrec.features import Features, content_vectors
from dtrec.model.losses import cross_modal_accuracy, neighbour_distillation
from dtrec.model.tower import DualTower
from dtrec.sequences import build_examples
from dtrec.train import distributed as D
from dtrec.train.batching import BatchPlan, Collator
from dtrec.train.checkpoint import init_from, merge_init_config
from dtrec.train.finetune import FinetuneObjective, dataset_objective, evaluate_model
from dtrec.train.loop import FitConfig, Task, fit, seed_everything, train_step
from dtrec.train.views import ItemViewObjective, check_sources, item_table, multimodal_table


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

    def __init__(self, model: DualTower, trainer: nn.Module, objective: ItemViewObjective,
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


# --------------------------------------------------------------------------- sequences across domains
class DomainBatches:
    """Sequence batches of several sources, each batch from one source, in a seeded shuffled order.

    A pass holds every source's batches once (`BatchPlan`, length-grouped, split over DDP
    ranks); passes follow one another, each reshuffled. An epoch is `steps` batches of that
    stream (0: one pass), so epoch `e` always draws the same batches, also on resume.
    """

    def __init__(self, examples: list[list[list[int]]], batch_size: int, collator: Collator, *, steps: int = 0,
                 seed: int = 0, world_size: int = 1, rank: int = 0):
        self.examples, self.collator, self.seed, self.rank = examples, collator, seed, rank
        self.plans = [BatchPlan([len(e) for e in ex], batch_size, seed=seed + 7919 * d, world_size=world_size,
                                rank=rank) for d, ex in enumerate(examples)]
        self.per_pass = sum(len(p) for p in self.plans)
        if self.per_pass == 0:
            raise ValueError("no source has a training history of two items: nothing to learn from")
        self.steps = steps or self.per_pass
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch `epoch`'s batches next (and reseed the collator's masks)."""
        self.epoch = epoch
        self.collator.set_epoch(epoch, self.rank)

    def _pass(self, n: int) -> list[tuple[int, list[int]]]:
        order = []
        for d, plan in enumerate(self.plans):
            plan.set_epoch(n)
            order += [(d, b) for b in plan]
        perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + n))
        return [order[i] for i in perm.tolist()]

    def __iter__(self):
        start = self.epoch * self.steps
        n, offset = divmod(start, self.per_pass)
        left = self.steps
        while left > 0:
            batches = self._pass(n)[offset:offset + left]
            for d, b in batches:
                yield d, self.collator([self.examples[d][i] for i in b])
            left -= len(batches)
            n, offset = n + 1, 0

    def __len__(self) -> int:
        return self.steps


class MultiDomainObjective(nn.Module):
    """Next-item loss of one source's batch plus the weighted item-view loss and, optionally, the weighted
    neighbour distillation of a batch of items of every source, as one module for DDP."""

    def __init__(self, model: DualTower, sequence_objectives: list[FinetuneObjective],
                 item_objective: ItemViewObjective, item_weight: float, geometry_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.sequence_objectives = sequence_objectives  # a plain list: they share `model`, registered above
        self.item_objective = item_objective
        self.item_weight = item_weight
        self.geometry_weight = geometry_weight

    def forward(self, source: int, batch: dict[str, Tensor | None], values: dict[str, Tensor],
                present: dict[str, Tensor], geometry: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None,
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(total loss, per-pair item losses, sequence loss, geometry loss); `geometry`: (values, present) of
        the items whose neighbourhoods to keep, needed when `geometry_weight` is set."""
        seq = self.sequence_objectives[source](batch["items"], batch["padding"], batch["masked"], batch["targets"])
        total, geo = seq, torch.zeros((), device=seq.device)
        if self.geometry_weight:
            if geometry is None:
                raise ValueError("geometry_weight is set but no geometry batch was given")
            gv, gp = geometry
            geo = neighbour_distillation(self.model.encode_items(gv, gp), content_vectors(gv, gp),
                                         self.model.config.temperature)
            total = total + self.geometry_weight * geo
        if self.item_weight == 0:
            return total, torch.zeros(len(self.item_objective.pairs), device=seq.device), seq.detach(), geo.detach()
        items, per_pair = self.item_objective(values, present)
        return total + self.item_weight * items, per_pair, seq.detach(), geo.detach()


def validation_cases(dataset: Dataset, limit: int, seed: int) -> list:
    """Up to `limit` of `dataset`'s validation cases, a seeded sample (all when `limit` is 0)."""
    cases = dataset.eval_cases("valid")
    if limit and len(cases) > limit:
        keep = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        cases = [cases[i] for i in keep.tolist()]
    return cases


class SequencePretrainTask(Task):
    """Multi-domain pretraining as a `fit` task: one source's sequence batch + an item batch per step;
    validation NDCG@10 per source (and their mean) and cross-modal retrieval."""

    name = "pretrain"

    def __init__(self, model: DualTower, trainer: nn.Module, objective: MultiDomainObjective,
                 optimizer: torch.optim.Optimizer, batches: DomainBatches, item_loader: DataLoader,
                 item_rows: Features, tables: list[Features], names: list[str], valid_cases: list[list],
                 config: PretrainConfig, device: torch.device, out: Path,
                 geometry: tuple[Tensor, Tensor] | None = None):
        self.model, self.trainer, self.objective, self.optimizer = model, trainer, objective, optimizer
        self.domain_batches, self.item_loader, self.item_rows = batches, item_loader, item_rows
        self.tables, self.names, self.valid_cases = tables, names, valid_cases
        self.config, self.device, self.out = config, device, out
        self.amp = config.amp and device.type == "cuda"
        self.pairs = objective.item_objective.pairs
        self.geometry = geometry
        self._reset(0)

    def _reset(self, epoch: int) -> None:
        self.parts = torch.zeros(len(self.pairs), device=self.device)
        self.seq_total = torch.zeros((), device=self.device)
        self.geo_total = torch.zeros((), device=self.device)
        self.item_epoch = epoch * 1_000  # the item loader's own epochs, distinct for every training epoch
        self.item_loader.sampler.set_epoch(self.item_epoch)
        self.item_iter = iter(self.item_loader)

    def batches(self, epoch: int) -> DomainBatches:
        """Epoch `epoch`'s sequence batches; the item batches restart from a seed of the epoch."""
        self.domain_batches.set_epoch(epoch)
        self._reset(epoch)
        return self.domain_batches

    def _next_items(self) -> Tensor:
        try:
            return next(self.item_iter)
        except StopIteration:  # the items run out before the sequences do: another shuffled pass
            self.item_epoch += 1
            self.item_loader.sampler.set_epoch(self.item_epoch)
            self.item_iter = iter(self.item_loader)
            return next(self.item_iter)

    def step(self, batch: tuple[int, dict[str, Any]]) -> Tensor:
        """One update: source `batch[0]`'s collated histories and the next item batch."""
        source, b = batch
        b = {k: (v.to(self.device, non_blocking=True) if v is not None else None) for k, v in b.items()}
        idx = self._next_items().to(self.device, non_blocking=True)
        vals = {m: self.item_rows.values[m][idx] for m in self.model.modalities}
        pres = {m: self.item_rows.present[m][idx] for m in self.model.modalities}
        geo = None
        if self.geometry is not None:  # drawn only when the term is on, so runs without it keep their RNG stream
            owner, local = self.geometry  # (source, row) of every item the term may draw
            pick = torch.randint(len(owner), (min(self.config.batch_size, len(owner)),))
            parts = [(t, local[pick][owner[pick] == k].to(self.device)) for k, t in enumerate(self.tables)]
            geo = ({m: torch.cat([t.values[m][r] for t, r in parts]) for m in self.model.modalities},
                   {m: torch.cat([t.present[m][r] for t, r in parts]) for m in self.model.modalities})
        loss, per_pair, seq, geo_loss = train_step(
            self.model, self.optimizer, lambda: self.trainer(source, b, vals, pres, geo), self.device.type,
            amp=self.amp, grad_clip=self.config.grad_clip)
        self.parts += per_pair.detach()
        self.seq_total += seq
        self.geo_total += geo_loss
        return loss

    def epoch_metrics(self, steps: int) -> dict[str, float]:
        """The epoch's mean sequence loss, mean loss of each item-view pair and, when on, mean geometry loss."""
        n = max(steps, 1)
        row = {"loss_sequence": float(self.seq_total) / n}
        if self.geometry is not None:
            row["loss_geometry"] = float(self.geo_total) / n
        row.update({f"loss_{a}_{c}": float(x) for (a, c), x in zip(self.pairs, (self.parts / n).tolist())})
        return row

    def validate(self) -> dict[str, float]:
        """NDCG@10 and Recall@10 on each source's validation sample, their means, and cross-modal retrieval."""
        out: dict[str, float] = {}
        ndcg, recall = [], []
        for name, table, cases in zip(self.names, self.tables, self.valid_cases):
            if not cases:
                continue
            m = evaluate_model(self.model, table, cases)
            out[f"ndcg@10/{name}"], out[f"recall@10/{name}"] = m["ndcg@10"], m["recall@10"]
            ndcg.append(m["ndcg@10"])
            recall.append(m["recall@10"])
        out["ndcg@10"] = sum(ndcg) / len(ndcg) if ndcg else float("nan")
        out["recall@10"] = sum(recall) / len(recall) if recall else float("nan")
        out.update(cross_modal_eval(self.model, self.item_rows, list(range(len(self.item_rows)))))
        return out

    def save_checkpoint(self) -> None:
        """The best model so far into OUT."""
        self.model.save_pretrained(self.out)


def _pretrain_sequences(sources: list[tuple[Dataset | None, Features]], config: PretrainConfig, out: Path,
                        progress: bool, record: dict, info: D.DistInfo, init: str | Path | None,
                        resume: bool) -> dict[str, Any]:
    if any(ds is None for ds, _ in sources):
        raise ValueError("sequence pretraining needs prepared data sets with interactions, not bare features")
    check_sources(sources)
    seed_everything(config.seed)
    device = info.device
    first = sources[0][1]
    model_cfg = dataclasses.replace(config.model, encoder=first.encoder, modality_dims=first.dims)
    if init is not None:
        model_cfg = merge_init_config(model_cfg, init)
    config = dataclasses.replace(config, model=model_cfg)
    model = DualTower(model_cfg).to(device)
    if init is None:  # one standardisation for every domain: the statistics of all their (non-cold) items
        model.fit_feature_norm_over([(f, ds.cold_items) for ds, f in sources])
    init_notes = init_from(model, init) if init is not None else []
    names = [ds.name for ds, _ in sources]
    tables = [f.to(device) for _, f in sources]
    examples, seq_objectives = [], []
    for (ds, f), table in zip(sources, tables):
        seqs = ds.train_sequences()
        examples.append(build_examples(seqs, model_cfg.objective, model_cfg.max_len))
        seq_objectives.append(dataset_objective(model, ds, table, seqs, resolve_negatives(config.negatives, len(f)),
                                                config.num_negatives))
    item_rows = multimodal_table(sources).to(device)
    objective = MultiDomainObjective(model, seq_objectives, ItemViewObjective(model, info, config.item_pairs),
                                     config.item_weight, config.geometry_weight)
    geometry = None
    if config.geometry_weight:  # every source's items, text-only ones included, cold items left out
        owner, local = [], []
        for k, (ds, f) in enumerate(sources):
            rows = sorted(set(range(len(f))) - set(ds.cold_items))
            owner += [k] * len(rows)
            local += rows
        geometry = (torch.tensor(owner, dtype=torch.long), torch.tensor(local, dtype=torch.long))
    trainer: nn.Module = objective
    if info.enabled:
        trainer = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    collator = Collator.for_model(model_cfg, config.seed)
    batches = DomainBatches(examples, config.sequence_batch_size, collator, steps=config.steps_per_epoch,
                            seed=config.seed, world_size=info.world_size, rank=info.rank)
    item_batch = max(2, min(config.batch_size, len(item_rows)) // info.world_size)
    sampler = DistributedSampler(range(len(item_rows)), num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=config.seed, drop_last=len(item_rows) >= 2 * item_batch)
    item_loader = DataLoader(list(range(len(item_rows))), batch_size=item_batch, sampler=sampler,
                             drop_last=len(item_rows) >= 2 * item_batch,
                             collate_fn=lambda b: torch.tensor(b, dtype=torch.long))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    valid = [validation_cases(ds, config.valid_users, config.seed) for ds, _ in sources]
    task = SequencePretrainTask(model, trainer, objective, optimizer, batches, item_loader, item_rows, tables,
                                names, valid, config, device, out, geometry)
    loop = FitConfig(epochs=config.epochs, max_steps=config.max_steps, metric="ndcg@10",
                     patience=config.patience or None, log_every=config.log_every, resumable=True,
                     headline=("valid_ndcg@10", "valid ndcg@10 (mean over sources)", ".4f"))
    run_record = dict(config=config, seed=config.seed, world_size=info.world_size, device=str(device),
                      sources={n: {"items": len(f), "windows": len(e)} for n, (_, f), e in
                               zip(names, sources, examples)},
                      item_view_items=len(item_rows), init=str(init) if init else None, init_notes=init_notes,
                      **record)
    fitted = fit(task, loop, out=out, info=info, resume=resume, progress=progress, record=run_record)
    return {"best_epoch": fitted.best_epoch, **fitted.best_metrics}


def pretrain(
    sources: list[tuple[Dataset | None, Features]],
    config: PretrainConfig,
    out: str | Path,
    progress: bool = True,
    record: dict | None = None,
    init: str | Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Pretrain a DualTower on the items (and with `config.sequences`, the histories) of `sources`; returns the
    last epoch's metrics (items only) or the best epoch's validation (sequences)."""
    info = D.setup(config.device)
    try:
        if config.sequences:
            return _pretrain_sequences(sources, config, Path(out), progress, record or {}, info, init, resume)
        if init is not None or resume:
            raise ValueError("--init and --resume apply to sequence pretraining (--sequences) only")
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
    objective = ItemViewObjective(model, info, config.item_pairs)
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
