"""Training speed: dtrec fine-tuning vs SASRec vs the bare loop, and step time vs catalog size and history length.

Each model is timed on its product training step (`dtrec.train.finetune.finetune_step`,
`dtrec.baselines.sasrec.sasrec_step`); the bare loop is the yardstick in `benchmarks/bare.py`.
Seconds/epoch are timed steps (after warm-up) times steps per epoch, the same way for every
model, so a time budget may stop a run before the epoch ends.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from benchmarks.bare import bare_model, padded_examples
from benchmarks.common import BenchError, peak_memory, sync
from dtrec.baselines.sasrec import SASRec, SASRecConfig, SASRecTrainConfig, sasrec_step, training_windows, trim_padding
from dtrec.config import FinetuneConfig, ModelConfig, resolve_negatives
from dtrec.encoders.base import resolve_device
from dtrec.features import Features
from dtrec.model import DualTower
from dtrec.model.losses import item_log_frequency
from dtrec.sequences import build_examples
from dtrec.train.batching import GROUP_BATCHES, Collator, length_grouped_batches
from dtrec.train.finetune import FinetuneObjective, finetune_step


def _timed_steps(batches: Iterator[Any], step: Callable[[Any], tuple[int, int]], *, device: torch.device, warmup: int,
                 max_steps: int | None, max_seconds: float | None, group: int | None = None) -> dict[str, Any]:
    """Run `step` over `batches`; the first `warmup` steps are untimed. `step` returns (examples, targets).

    On a GPU, steps are timed in groups of `group` (default 8) with one synchronisation per
    group, as a training loop runs: the host prepares the next batch while the device works.
    Each step of a group is credited the group's mean time."""
    group = group or (8 if device.type == "cuda" else 1)
    times: list[float] = []
    examples = targets = done_warmup = 0
    pending = 0
    start = time.perf_counter()
    t0 = start
    for batch in batches:
        if done_warmup < warmup:
            step(batch)
            sync(device)
            done_warmup += 1
            t0 = time.perf_counter()
            continue
        n_ex, n_t = step(batch)
        examples += int(n_ex)
        targets += int(n_t)
        pending += 1
        enough = max_steps is not None and len(times) + pending >= max_steps
        if pending >= group or enough:
            sync(device)
            t1 = time.perf_counter()
            times.extend([(t1 - t0) / pending] * pending)
            pending, t0 = 0, t1
            if enough or (max_seconds is not None and t1 - start >= max_seconds):
                break
    if pending:
        sync(device)
        t1 = time.perf_counter()
        times.extend([(t1 - t0) / pending] * pending)
    if not times:
        raise BenchError("the training benchmark ran no timed step: give it more steps or data")
    return {"times": times, "examples": examples, "targets": targets, "wall_s": time.perf_counter() - start}


def _epoch_batches(lengths: list[int], batch_size: int, epochs: int, seed: int,
                   group_by_length: bool) -> Iterator[list[int]]:
    """Index batches as the trainers draw them (`length_grouped_batches`), epoch after epoch."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        yield from length_grouped_batches(lengths, batch_size, g, GROUP_BATCHES if group_by_length else 1)


def _run_summary(name: str, run: dict, *, n_examples: int, batch_size: int, params: int, memory: dict,
                 extra: dict | None = None) -> dict[str, Any]:
    steps_per_epoch = math.ceil(n_examples / batch_size)
    t = np.asarray(run["times"])
    per_step = float(t.mean())
    out = {
        "model": name,
        "params": params,
        "examples_per_epoch": n_examples,
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": int(len(t)),
        "seconds_per_step": per_step,
        "step_p50_s": float(np.median(t)),
        "seconds_per_epoch": per_step * steps_per_epoch,
        "epoch_extrapolated": len(t) < steps_per_epoch,
        "sequences_per_s": run["examples"] / float(t.sum()),
        "targets_per_s": run["targets"] / float(t.sum()),
        "peak_memory_mb": memory.get("peak_mb"),
        "memory_kind": memory.get("kind"),
    }
    out.update(extra or {})
    return out


def train_dtrec_steps(examples: list[list[int]], features: Any, model_config: Any, *, batch_size: int = 256,
                      epochs: int = 1, max_steps: int | None = None, max_seconds: float | None = None,
                      device: str | torch.device | None = None, variant: str = "fp32", negatives: str = "all",
                      num_negatives: int = 1024, seed: int = 0, warmup: int | None = None,
                      group_by_length: bool = True, pad_multiple: int = 1, name: str = "dtrec") -> dict[str, Any]:
    """Time dtrec's fine-tuning step (`finetune_step`: FinetuneObjective, AdamW, clipping) on `examples`."""
    device = resolve_device(device)
    train = FinetuneConfig()
    torch.manual_seed(seed)
    with peak_memory(device) as mem:
        model = DualTower(model_config).to(device).train()
        table = features.to(device)
        log_freq = item_log_frequency(examples, len(features)).to(device) if negatives != "all" else None
        objective = FinetuneObjective(model, table, negatives, num_negatives, log_freq)
        fn: Callable = torch.compile(objective, dynamic=True) if variant == "compile" else objective
        collator = Collator.for_model(model_config, seed, pad_multiple)
        opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        amp = variant == "bf16" or (variant == "compile" and device.type == "cuda")

        widths: set[int] = set()  # batch shapes met: a GPU may plan or compile kernels once per shape

        def step(idx: list[int]) -> tuple[int, int]:
            b = collator([examples[i] for i in idx])
            widths.add(int(b["items"].shape[1]))
            finetune_step(fn, model, opt, b, device, amp=amp, grad_clip=train.grad_clip)
            return len(idx), int((b["targets"] >= 0).sum())

        run = _timed_steps(_epoch_batches([len(e) for e in examples], batch_size, epochs + 1, seed,
                                          group_by_length), step, device=device,
                           warmup=warmup if warmup is not None else (3 if variant == "compile" else 1),
                           max_steps=max_steps if max_steps is not None else epochs * math.ceil(
                               len(examples) / batch_size), max_seconds=max_seconds)
    params = sum(p.numel() for p in model.parameters())
    return _run_summary(name, run, n_examples=len(examples), batch_size=batch_size, params=params, memory=mem,
                        extra={"variant": variant, "group_by_length": group_by_length, "pad_multiple": pad_multiple,
                               "distinct_widths": len(widths), "negatives": negatives,
                               "objective": model_config.objective,
                               "d_model": model_config.d_model, "max_len": model_config.max_len,
                               "catalog": len(features)})


def train_sasrec_steps(sequences: list[list[int]], num_items: int, *, batch_size: int = 256, epochs: int = 1,
                       max_steps: int | None = None, max_seconds: float | None = None,
                       device: str | torch.device | None = None, variant: str = "fp32", seed: int = 0,
                       warmup: int | None = None, group_by_length: bool = True, pad_multiple: int = 1,
                       **config: Any) -> dict[str, Any]:
    """Time SASRec's training step (`sasrec_step`: windows, softmax over all items, Adam) on `sequences`."""
    device = resolve_device(device)
    train = SASRecTrainConfig()
    torch.manual_seed(seed)
    cfg = SASRecConfig(num_items=num_items, **config)
    x_all, y_all = training_windows(sequences, cfg.max_len)
    with peak_memory(device) as mem:
        model = SASRec(cfg).to(device).train()
        fwd: Callable = torch.compile(model, dynamic=True) if variant == "compile" else model
        opt = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        amp = variant == "bf16" or (variant == "compile" and device.type == "cuda")
        widths: set[int] = set()

        def step(idx: list[int]) -> tuple[int, int]:
            x, y = trim_padding(x_all[idx], y_all[idx], pad_multiple, cfg.max_len)
            widths.add(int(x.shape[1]))
            sasrec_step(model, opt, x.to(device), y.to(device), amp=amp, forward=fwd)
            # counted on the host, as for dtrec: the training loop (`fit`) reads no step's loss on the host
            return len(idx), int((y > 0).sum())

        n = len(x_all)
        run = _timed_steps(_epoch_batches((x_all > 0).sum(1).tolist(), batch_size, epochs + 1, seed,
                                          group_by_length), step, device=device,
                           warmup=warmup if warmup is not None else (3 if variant == "compile" else 1),
                           max_steps=max_steps if max_steps is not None else epochs * math.ceil(n / batch_size),
                           max_seconds=max_seconds)
    params = sum(p.numel() for p in model.parameters())
    return _run_summary("sasrec", run, n_examples=n, batch_size=batch_size, params=params, memory=mem,
                        extra={"variant": variant, "group_by_length": group_by_length, "pad_multiple": pad_multiple,
                               "distinct_widths": len(widths), "hidden": cfg.hidden,
                               "max_len": cfg.max_len,
                               "catalog": num_items})


def train_bare_steps(examples: list[list[int]], features: Any, model_config: Any, *, batch_size: int = 256,
                     epochs: int = 1, max_steps: int | None = None, max_seconds: float | None = None,
                     device: str | torch.device | None = None, variant: str = "fp32", seed: int = 0,
                     warmup: int | None = None) -> dict[str, Any]:
    """Time the yardstick (`benchmarks.bare`): the same model in a minimal loop (data pre-padded on the device,
    random batches)."""
    device = resolve_device(device)
    torch.manual_seed(seed)
    with peak_memory(device) as mem:
        model = bare_model(model_config).to(device).train()
        table = [features.values[m].to(device, torch.float32) for m in model.modalities]
        data = {k: v.to(device) for k, v in padded_examples(examples, model_config.max_len).items()}
        fn: Callable = torch.compile(model, dynamic=False) if variant == "compile" else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=device.type == "cuda")
        amp = variant == "bf16" or (variant == "compile" and device.type == "cuda")
        n = len(examples)
        g = torch.Generator().manual_seed(seed)

        def batches() -> Iterator[torch.Tensor]:
            while True:  # full batches only, so the compiled variant sees one shape
                perm = torch.randperm(n, generator=g).to(device)
                yield from (perm[i: i + batch_size] for i in range(0, n - batch_size + 1, batch_size))
                if n < batch_size:
                    yield perm

        def step(idx: torch.Tensor) -> tuple[int, int]:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = fn(data["items"][idx], data["padding"][idx], data["targets"][idx], table)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return len(idx), 0

        run = _timed_steps(batches(), step, device=device,
                           warmup=warmup if warmup is not None else (3 if variant == "compile" else 1),
                           max_steps=max_steps if max_steps is not None else epochs * math.ceil(n / batch_size),
                           max_seconds=max_seconds)
    run["targets"] = run["examples"] * float((data["targets"] >= 0).sum()) / n  # mean targets per example
    params = sum(p.numel() for p in model.parameters())
    return _run_summary("bare", run, n_examples=n, batch_size=batch_size, params=params, memory=mem,
                        extra={"variant": variant, "group_by_length": False, "negatives": "all",
                               "d_model": model_config.d_model, "max_len": model_config.max_len,
                               "catalog": len(features)})


def _sasrec_window(overrides: dict | None) -> int:
    """The window length SASRec trains on with these config overrides."""
    return int((overrides or {}).get("max_len", SASRecConfig(num_items=1).max_len))


def matched_sasrec(cfg: Any) -> dict[str, Any]:
    """SASRec settings of the same size as a dtrec ModelConfig: width, depth, heads, FFN, window, dropout."""
    return {"hidden": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_ff": cfg.d_ff,
            "max_len": cfg.max_len, "dropout": cfg.dropout, "attn_dropout": cfg.dropout}


def measure_training(dataset: Any, features: Any, *, model_config: Any | None = None, batch_size: int = 256,
                     epochs: int = 1, max_steps: int | None = None, max_seconds: float | None = None,
                     device: str | torch.device | None = None, variants: tuple[str, ...] = ("fp32",),
                     sasrec: dict | None = None, group_by_length: bool = True, pad_multiple: int = 1, seed: int = 0,
                     out: dict | None = None) -> dict[str, Any]:
    """dtrec fine-tuning vs SASRec vs the bare loop on the same training sequences and batch size; ratios per variant.

    SASRec runs twice: at dtrec's size (`matched_sasrec`, the comparison that isolates
    content encoding from model size) and at its own defaults (RecBole's 64-d, or
    `sasrec` overrides). dtrec runs with `FinetuneConfig`'s negatives resolved for the catalog ("all" up to
    `FULL_SOFTMAX_MAX_ITEMS`: the whole catalog through the item tower every step); the bare loop
    (`benchmarks.bare`, causal objective only) is the same model without dtrec's
    machinery. Results go into `out` run by run, so an interrupted benchmark keeps them."""
    device = resolve_device(device)
    cfg = model_config or ModelConfig(encoder=features.encoder, modality_dims=features.dims)
    if not cfg.modality_dims:
        cfg = dataclasses.replace(cfg, encoder=features.encoder, modality_dims=features.dims)
    seqs = dataset.train_sequences()
    examples = build_examples(seqs, cfg.objective, cfg.max_len)
    negatives = resolve_negatives(FinetuneConfig().negatives, len(features))
    matched = matched_sasrec(cfg)
    res = out if out is not None else {}
    res.update({
        "data": getattr(dataset, "name", ""),
        "items": len(dataset.catalog),
        "train_sequences": len(seqs),
        "device": str(device),
        "batch_size": batch_size,
        "group_by_length": group_by_length,
        "pad_multiple": pad_multiple,
        "epochs": epochs,
        "runs": {},
        "epoch_ratio_vs_matched_sasrec": {},
        "epoch_ratio_vs_default_sasrec": {},
        "epoch_ratio_vs_bare": {},
        "variant_errors": {},
        "objective": cfg.objective,
        "dtrec_size": {k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads", "d_ff", "max_len")},
        "note": "seconds/epoch = mean timed step x steps/epoch (validation excluded); dtrec's "
                + ("Cloze examples are one per history prefix" if cfg.objective == "cloze" else
                   f"causal examples are windows of {cfg.max_len} items") + "; SASRec's windows of "
                f"{matched['max_len']} (matched) and {_sasrec_window(sasrec)} (default) items; "
                + ("batches grouped by history length (the trainers' default)" if group_by_length
                   else "random batches")
                + (f", widths rounded up to a multiple of {pad_multiple}" if pad_multiple > 1 else ""),
    })
    runs = res["runs"]
    for v in variants:  # run_bench asks for bf16 / compile on a CPU only when told to (--variants)
        kw = dict(batch_size=batch_size, epochs=epochs, max_steps=max_steps, max_seconds=max_seconds, device=device,
                  variant=v, seed=seed)
        try:
            runs[f"dtrec_{v}"] = train_dtrec_steps(examples, features, cfg, negatives=negatives,
                                                   group_by_length=group_by_length, pad_multiple=pad_multiple, **kw)
            runs[f"sasrec_matched_{v}"] = train_sasrec_steps(seqs, len(dataset.catalog), group_by_length=group_by_length,
                                                             pad_multiple=pad_multiple, **kw, **matched)
            runs[f"sasrec_{v}"] = train_sasrec_steps(seqs, len(dataset.catalog), group_by_length=group_by_length,
                                                     pad_multiple=pad_multiple, **kw, **(sasrec or {}))
            if cfg.objective == "causal":
                runs[f"bare_{v}"] = train_bare_steps(examples, features, cfg, **kw)
        except Exception as e:  # e.g. torch.compile failing: keep the other variants' numbers
            if v == "fp32":
                raise
            res["variant_errors"][v] = f"{type(e).__name__}: {str(e)[:300]}"
            for k in [k for k in runs if k.endswith(f"_{v}")]:
                del runs[k]
            continue
        d = runs[f"dtrec_{v}"]["seconds_per_epoch"]
        res["epoch_ratio_vs_matched_sasrec"][v] = d / runs[f"sasrec_matched_{v}"]["seconds_per_epoch"]
        res["epoch_ratio_vs_default_sasrec"][v] = d / runs[f"sasrec_{v}"]["seconds_per_epoch"]
        if f"bare_{v}" in runs:
            res["epoch_ratio_vs_bare"][v] = d / runs[f"bare_{v}"]["seconds_per_epoch"]
    return res


# ====================================================================== scaling (training)
def measure_training_scaling(catalog_sizes: tuple[int, ...] = (1000, 3000, 10000),
                             history_lengths: tuple[int, ...] = (5, 10, 20, 40), *, base_catalog: int = 1000,
                             base_length: int = 20, batch_size: int = 64, steps: int = 2,
                             dims: dict[str, int] | None = None, model: dict | None = None,
                             device: str | torch.device | None = None, seed: int = 0) -> dict[str, Any]:
    """Step time of dtrec (all / sampled negatives) and SASRec of the same size vs catalog size and history length."""
    device = resolve_device(device)
    dims = dims or {"text": 512, "image": 512}
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def one(n_items: int, length: int) -> dict[str, Any]:
        feats = Features("synthetic", {m: torch.randn(n_items, d, generator=g) for m, d in dims.items()},
                         {m: torch.ones(n_items, dtype=torch.bool) for m in dims})
        seqs = [rng.integers(0, n_items, length + 1).tolist() for _ in range(batch_size * (steps + 1))]
        cfg = ModelConfig(encoder="synthetic", modality_dims=dict(dims), max_len=length, **(model or {}))
        # each sequence is one example of exactly length + 1 items, so every batch has the same width
        kw = dict(batch_size=batch_size, max_steps=steps, device=device, seed=seed, warmup=1)
        row: dict[str, Any] = {"catalog": n_items, "history_length": length}
        for neg in ("all", "sampled"):
            r = train_dtrec_steps(seqs, feats, cfg, negatives=neg, epochs=steps + 1, **kw)
            row[f"dtrec_{neg}_step_ms"] = 1000 * r["seconds_per_step"]
        r = train_sasrec_steps(seqs, n_items, epochs=steps + 2, **kw, **matched_sasrec(cfg))
        row["sasrec_step_ms"] = 1000 * r["seconds_per_step"]
        return row

    by_catalog = [one(n, base_length) for n in catalog_sizes]
    by_length = [one(base_catalog, L) for L in history_lengths]
    return {"device": str(device), "batch_size": batch_size, "steps": steps, "dims": dims,
            "model": model or "reference (ModelConfig defaults)", "by_catalog": by_catalog, "by_length": by_length,
            "note": "synthetic features and histories; negatives 'all' encodes the whole catalog every step, "
                    "'sampled' 1024 logQ-corrected negatives"}
