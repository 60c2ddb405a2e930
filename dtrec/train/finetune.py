"""Sequential fine-tuning: histories -> next item, retrieval loss against item-tower outputs.

Writes into OUT: `best/` (a DualTower checkpoint chosen on validation NDCG@10),
`last/` (resumable state), `metrics.jsonl` (one line per epoch), `valid.json`,
`test.json` and `train_config.json`. Runs alone or under torchrun (DDP);
`batch_size` is the global batch, split evenly over processes. The epochs, early
stopping, resume and logs are `dtrec.train.loop.fit`'s; this module supplies the
task (`FinetuneTask`) and its per-batch step (`finetune_step`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dtrec.config import FinetuneConfig, resolve_negatives
from dtrec.data.catalog import Dataset
from dtrec.eval import evaluate
from dtrec.features import Features, load_features
from dtrec.model.losses import candidate_set, item_log_frequency, retrieval_loss
from dtrec.model.tower import DualTower
from dtrec.sequences import build_examples
from dtrec.train import distributed as D
from dtrec.train.batching import BatchPlan, Collator
from dtrec.train.checkpoint import init_from, merge_init_config
from dtrec.train.loop import FitConfig, Task, fit, seed_everything, train_step
from dtrec.train.views import ItemViewObjective, multimodal_table


class FinetuneObjective(nn.Module):
    """The training forward pass as one module, so DDP sees every parameter it uses.

    With `views` (an `ItemViewObjective`) and `item_weight` > 0, each step adds the item views' loss over
    `item_batch` items drawn afresh from `view_items`, weighted: the next-item loss alone lets the item
    tower forget what the frozen encoders know about content (docs/model.md, "Item views in fine-tuning")."""

    def __init__(self, model: DualTower, table: Features, negatives: str = "all", num_negatives: int = 1024,
                 item_log_freq: Tensor | None = None, held_out: Tensor | None = None,
                 views: ItemViewObjective | None = None, view_items: Features | None = None,
                 item_weight: float = 0.0, item_batch: int = 512):
        super().__init__()
        self.model = model
        # A plain attribute, not a buffer: DDP would otherwise broadcast the whole table every step.
        self.table = table
        self.negatives = negatives
        self.num_negatives = num_negatives
        self.item_log_freq = item_log_freq
        self.held_out = held_out  # (N,) bool: the cold-start items, never candidates in training
        if item_weight > 0 and (views is None or view_items is None or len(view_items) < 2):
            raise ValueError("item_weight > 0 needs the item views and at least two items to contrast")
        self.views = views
        self.view_items = view_items  # plain attribute, like `table`
        self.item_weight = item_weight
        self.item_batch = item_batch
        self._content_cache: Tensor | None = None  # the content term's vectors of `table`, made on first use

    def forward(self, items: Tensor, padding: Tensor, masked: Tensor | None, targets: Tensor) -> Tensor:
        """Mean retrieval loss over every position with a target (plus the weighted item views' loss)."""
        loss = self.next_item_loss(items, padding, masked, targets)
        if self.item_weight > 0:
            loss = loss + self.item_weight * self.item_view_loss()
        return loss

    def item_view_loss(self) -> Tensor:
        """The item views' loss over a fresh random batch of `view_items`."""
        rows, info = self.view_items, self.views.info
        n = len(rows)
        per_rank = max(1, min(self.item_batch, n) // info.world_size)
        # Every process draws the same permutation (one seed, the same draws so far) and takes its own slice,
        # so the batch gathered across processes holds no item twice (a duplicate would be a false negative).
        perm = torch.randperm(n, device=rows.values[self.model.modalities[0]].device)
        idx = perm[info.rank * per_rank:(info.rank + 1) * per_rank]
        loss, _ = self.views({m: rows.values[m][idx] for m in self.model.modalities},
                             {m: rows.present[m][idx] for m in self.model.modalities})
        return loss

    def next_item_loss(self, items: Tensor, padding: Tensor, masked: Tensor | None, targets: Tensor) -> Tensor:
        """Mean retrieval loss over every position with a target."""
        model, table = self.model, self.table
        h = model.encode_sequences(items, padding, table, masked)
        queries = h.reshape(-1, h.shape[-1])
        flat_t = targets.reshape(-1)
        cand, labels, log_q, exclude = candidate_set(flat_t, len(table), self.negatives, self.num_negatives,
                                                     self.item_log_freq, held_out=self.held_out)
        if self.negatives == "all":
            # The reference re-encodes the whole catalog every step: both sides stay at one feature level.
            item_emb = model.encode_items(table.values, table.present, cand)
        else:
            item_emb = model.encode_items({m: table.values[m][cand] for m in model.modalities},
                                          {m: table.present[m][cand] for m in model.modalities}, cand)
        offsets = None
        if model.repeat_bias is not None:  # the repeat term over the same candidates, one row per query position
            offsets = model.repeat_bias(items, padding, cand).reshape(queries.shape[0], -1)
        if model.content_bias is not None:
            content = self.content_offsets(items, padding, cand).reshape(queries.shape[0], -1)
            offsets = content if offsets is None else offsets + content
        return retrieval_loss(queries, labels, item_emb, model.config.temperature, log_q, exclude, offsets)

    def content_offsets(self, items: Tensor, padding: Tensor, cand: Tensor) -> Tensor:
        """The content term (B, L, C) over candidates `cand` for every position of the batch."""
        # The cosines come from frozen features: only the term's weights learn, so they carry no graph.
        with torch.no_grad(), torch.autocast(items.device.type, enabled=False):
            content = self._content()
            # Each distinct history item's cosines are computed once, however often the batch holds it.
            uniq, inverse = torch.unique(items.clamp(min=0), return_inverse=True)
            sims = content[uniq.to(content.device)] @ content[cand.to(content.device)].T
            sims = sims.to(items.device)[inverse]
            same = items.unsqueeze(-1) == cand.to(items.device).view(1, 1, -1)
        return self.model.content_bias(sims, padding, same)

    def _content(self) -> Tensor:
        """The table's content vectors, computed on first use (the table does not change during training)."""
        if self._content_cache is None:
            self._content_cache = self.model.content_vectors(self.table)
        return self._content_cache


def dataset_objective(model: DualTower, dataset: Dataset, table: Features, sequences: list[list[int]],
                      negatives: str, num_negatives: int, item_weight: float = 0.0, item_batch: int = 512,
                      info: D.DistInfo | None = None, item_pairs: str = "") -> FinetuneObjective:
    """The `FinetuneObjective` of one data set: its items as candidates (`negatives` already resolved), logQ
    frequencies from `sequences` when sampling, its cold-start items held out of all training, not even negatives;
    with `item_weight` > 0, the item views over its (non-cold) items that have every modality."""
    device = table.values[model.modalities[0]].device
    log_freq = item_log_frequency(sequences, len(table)).to(device) if negatives != "all" else None
    held_out = None
    if dataset.cold_items:
        held_out = torch.zeros(len(table), dtype=torch.bool, device=device)
        held_out[torch.as_tensor(dataset.cold_items, dtype=torch.long, device=device)] = True
    views = view_items = None
    if item_weight > 0:
        views, view_items = ItemViewObjective(model, info, item_pairs), multimodal_table([(dataset, table)])
    return FinetuneObjective(model, table, negatives, num_negatives, log_freq, held_out, views, view_items,
                             item_weight, item_batch)


def finetune_step(trainer: nn.Module, model: DualTower, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
                  device: torch.device, *, amp: bool, grad_clip: float | None) -> Tensor:
    """One fine-tuning update on a collated batch: to `device`, the objective (bf16 autocast if `amp`), then the step.

    `trainer` is the `FinetuneObjective` (or its DDP / compiled wrapper); returns the loss."""
    items = batch["items"].to(device, non_blocking=True)
    padding = batch["padding"].to(device, non_blocking=True)
    masked = batch["masked"].to(device, non_blocking=True) if batch["masked"] is not None else None
    targets = batch["targets"].to(device, non_blocking=True)
    return train_step(model, optimizer, lambda: trainer(items, padding, masked, targets), device.type, amp=amp,
                      grad_clip=grad_clip)


def evaluate_model(model: DualTower, features: Features, cases: list, batch_size: int = 256) -> dict[str, float]:
    """Full-ranking metrics of `model` on `(history, target)` cases (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        return evaluate(model.scorer(features), cases, batch_size=batch_size)
    finally:
        model.train(was_training)


class FinetuneTask(Task):
    """Fine-tuning as a `fit` task: collated batches through `finetune_step`, full-ranking validation, `OUT/best/`."""

    name = "finetune"

    def __init__(self, model: DualTower, trainer: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 table: Features, valid_cases: list, config: FinetuneConfig, device: torch.device, rank: int,
                 out: Path):
        self.model, self.trainer, self.optimizer, self.loader = model, trainer, optimizer, loader
        self.table, self.valid_cases, self.config, self.device, self.rank, self.out = (
            table, valid_cases, config, device, rank, out)
        self.amp = config.amp and device.type == "cuda"

    def batches(self, epoch: int) -> DataLoader:
        """The loader, its batch plan and Cloze masks reseeded for `epoch`."""
        self.loader.batch_sampler.set_epoch(epoch)
        self.loader.collate_fn.set_epoch(epoch, self.rank)
        return self.loader

    def step(self, batch: dict[str, Any]) -> Tensor:
        """`finetune_step` on one collated batch."""
        return finetune_step(self.trainer, self.model, self.optimizer, batch, self.device, amp=self.amp,
                             grad_clip=self.config.grad_clip)

    def validate(self) -> dict[str, float]:
        """Full-ranking metrics on the validation cases."""
        return evaluate_model(self.model, self.table, self.valid_cases, self.config.eval_batch_size)

    def save_checkpoint(self) -> None:
        """The best model so far into `OUT/best/`."""
        self.model.save_pretrained(self.out / "best")


def trained_features(features: Features, config: FinetuneConfig) -> Features:
    """The features a fine-tuning reads: all of them, or the modalities `config.modalities` names."""
    if not config.modalities:
        return features
    return features.select(m.strip() for m in config.modalities.split(",") if m.strip())


def finetune(
    dataset: Dataset,
    features: Features,
    config: FinetuneConfig,
    out: str | Path,
    init: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    record: dict | None = None,
) -> dict[str, Any]:
    """Train a DualTower on `dataset`'s training sequences; returns best valid (and test) metrics."""
    out = Path(out)
    info = D.setup(config.device)
    try:
        return _finetune(dataset, features, config, out, init, resume, progress, record or {}, info)
    finally:
        D.teardown(info)


def _finetune(dataset: Dataset, features: Features, config: FinetuneConfig, out: Path, init, resume: bool,
              progress: bool, record: dict, info: D.DistInfo) -> dict[str, Any]:
    if len(features) != len(dataset.catalog):
        raise ValueError(f"features hold {len(features)} items but the catalog has {len(dataset.catalog)}")
    if config.batch_size % info.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {info.world_size} processes")
    seed_everything(config.seed)
    device = info.device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    features = trained_features(features, config)
    model_cfg = dataclasses.replace(config.model, encoder=features.encoder, modality_dims=features.dims)
    if init is not None:
        model_cfg = merge_init_config(model_cfg, init)
    if config.item_ids:
        model_cfg = dataclasses.replace(model_cfg, id_rows=len(features))
    # The resolved choice is what train_config.json records, so a rerun does not depend on "auto".
    config = dataclasses.replace(config, model=model_cfg, negatives=resolve_negatives(config.negatives, len(features)))
    model = DualTower(model_cfg).to(device)
    model.bind_item_ids(features)  # before the init, which keeps its IDs only if they are this catalog's
    reinit = top_level_modules(model, config.reinit, "re-initialise")
    if reinit and init is None:
        raise ValueError(f"reinit {config.reinit!r} needs an init checkpoint: from scratch every module is fresh")
    fresh = {n: {k: v.clone() for k, v in getattr(model, n).state_dict().items()} for n in reinit}
    init_notes = init_from(model, init) if init is not None else []
    for n, state in fresh.items():
        getattr(model, n).load_state_dict(state)
        init_notes.append(f"{n} re-initialised (not taken from the init)")
    # A pretrained model brings the statistics it was trained with, unless told to refit them here (a fresh
    # adaptor has none of its own).
    if init is None or config.refit_norm or "item_adaptor" in fresh:
        model.fit_feature_norm(features, exclude=dataset.cold_items)
    model.check_features(features)
    table = features.to(device)

    seqs = dataset.train_sequences()
    examples = build_examples(seqs, model_cfg.objective, model_cfg.max_len)
    if not examples:
        raise ValueError("no training sequence has two items: nothing to learn from")
    objective = dataset_objective(model, dataset, table, seqs, config.negatives, config.num_negatives,
                                  config.item_weight, config.item_batch_size, info, config.item_pairs)
    params = trainable_parameters(model, config.freeze)  # before DDP, which hooks only what trains
    trainer: nn.Module = objective
    if info.enabled:
        # Unused parameters exist by design (the mask token under the causal objective).
        trainer = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    sampler = BatchPlan([len(e) for e in examples], config.batch_size, group_by_length=config.group_by_length,
                        seed=config.seed, world_size=info.world_size, rank=info.rank)
    collator = Collator.for_model(model_cfg, config.seed, config.pad_multiple)
    loader = DataLoader(examples, batch_sampler=sampler, collate_fn=collator, pin_memory=device.type == "cuda")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    task = FinetuneTask(model, trainer, optimizer, loader, table, dataset.eval_cases("valid"), config, device,
                        info.rank, out)
    loop = FitConfig(epochs=config.epochs, max_steps=config.max_steps, eval_every=config.eval_every,
                     metric="ndcg@10", patience=config.patience, log_every=config.log_every, resumable=True)
    run_record = dict(config=config, dataset=str(dataset.root) if dataset.root else dataset.name, seed=config.seed,
                      init=str(init) if init else None, init_notes=init_notes, world_size=info.world_size,
                      device=str(device), **record)
    fitted = fit(task, loop, out=out, info=info, resume=resume, progress=progress, record=run_record)
    best_epoch, best_metrics = fitted.best_epoch, fitted.best_metrics

    result: dict[str, Any] = {"best_epoch": best_epoch, "valid": best_metrics}
    if info.is_main and best_epoch >= 0:
        (out / "valid.json").write_text(json.dumps({"epoch": best_epoch, **best_metrics}, indent=2))
        if config.evaluate_test:
            best_model = DualTower.from_pretrained(str(out / "best")).to(device)
            test = evaluate_model(best_model, table, dataset.eval_cases("test"), config.eval_batch_size)
            (out / "test.json").write_text(json.dumps({"epoch": best_epoch, **test}, indent=2))
            result["test"] = test
    D.barrier(info)
    return result


def top_level_modules(model: nn.Module, spec: str, verb: str) -> list[str]:
    """The comma-separated top-level module names in `spec`; one clear error for a name the model lacks."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    children = dict(model.named_children())
    unknown = [n for n in names if n not in children]
    if unknown:
        raise ValueError(f"cannot {verb} {', '.join(unknown)}: the model's modules are {', '.join(children)}")
    return names


def trainable_parameters(model: nn.Module, freeze: str) -> list[nn.Parameter]:
    """The parameters left to train once the comma-separated top-level modules `freeze` are held fixed."""
    names = top_level_modules(model, freeze, "freeze")
    children = dict(model.named_children())
    for n in names:
        children[n].requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"freezing {freeze!r} leaves nothing to train")
    return params


def load_dataset_features(data_dir: str | Path, encoder: str) -> tuple[Dataset, Features]:
    """A prepared data set and its cached features of `encoder`."""
    dataset = Dataset.load(data_dir)
    return dataset, load_features(data_dir, encoder, dataset.catalog)
