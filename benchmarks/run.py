"""`python -m benchmarks`: run the chosen sections in one process and write the report after each.

Running them in one process means each ratio (dtrec vs SASRec, approximate vs exact)
compares runs made under the same load on the same machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import faiss
import torch

from benchmarks.common import REPO, BenchError, machine_info
from benchmarks.data import bench_demo, synthetic_training_data
from benchmarks.features import measure_feature_extraction
from benchmarks.report import write_report
from benchmarks.serving import measure_api, measure_cold_start, measure_recommender, measure_serving, measure_startup
from benchmarks.training import measure_training, measure_training_scaling
from dtrec.config import ModelConfig
from dtrec.encoders.base import resolve_device
from dtrec.model import DualTower
from dtrec.train.finetune import load_dataset_features

SECTIONS = ("training", "serving", "api", "startup", "cold_start", "features", "scaling")
TRAIN_VARIANTS = ("fp32", "bf16", "compile")


@dataclass
class BenchConfig:
    """What `python -m benchmarks` measures and how big; `quick` picks small sizes that finish in about a minute."""

    quick: bool = False
    out: str = "docs/bench"
    only: tuple[str, ...] = SECTIONS
    device: str | None = None  # None: CUDA when available
    # prepared data with clip-vit-b-32 features (default: <repo>/data/scientific), or
    # "synthetic:<histories>x<items>" for random histories and features of that size
    data: str | None = None
    demo: str | None = None  # demo folder (default: assets/demo, else one built from the test fixture)
    encoders: tuple[str, ...] = ("offline", "tiny-clip")
    sizes: tuple[int, ...] | None = None  # serving catalog sizes (default: 1e3..1e5 quick, ..1e6 full)
    kinds: tuple[str, ...] = ("flat", "hnsw", "ivfpq")
    train_variants: tuple[str, ...] | None = None  # default: fp32 (+ bf16, compile on CUDA)
    batch_size: int | None = None  # training batch, the same for both models (None: 32 quick, 256 full)
    epochs: int = 1
    pad_multiple: int = 1  # training batch widths rounded up to a multiple (dtrec and SASRec alike)
    train_seconds: float | None = None  # time budget per training run (None: the preset's)
    threads: int | None = None  # torch and FAISS CPU threads (None: their defaults, one per core)
    merge: bool = False  # keep the sections of an earlier OUT/bench.json that this run does not measure
    seed: int = 0

    def __post_init__(self):
        self.only = tuple(self.only)
        unknown = sorted(set(self.only) - set(SECTIONS))
        if unknown:
            raise BenchError(f"unknown bench section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        bad = sorted(set(self.train_variants or ()) - set(TRAIN_VARIANTS))
        if bad:
            raise BenchError(f"unknown training variant(s) {', '.join(bad)}; choose from {', '.join(TRAIN_VARIANTS)}")
        if (self.batch_size is not None and self.batch_size < 1) or self.epochs < 1 or self.pad_multiple < 1:
            raise BenchError("batch_size, epochs and pad_multiple must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise BenchError(f"threads must be at least 1, not {self.threads}")


@dataclass
class _Plan:
    sizes: tuple[int, ...]
    train_seconds: float
    batch_size: int = 256
    train_model: dict = field(default_factory=dict)
    scaling: dict = field(default_factory=dict)
    n_queries: int = 200
    ef_grid: tuple[int, ...] = (16, 32, 64, 128, 256)
    nprobe_grid: tuple[int, ...] = (4, 8, 16, 32)
    ivf_train: int = 100_000
    tower_requests: int = 30
    approx_max: int | None = None
    api: dict = field(default_factory=dict)
    cold_n: int = 8
    startup_repetitions: int = 3
    feature_items: int = 64
    recommender_requests: int = 100


def _plan(cfg: BenchConfig) -> _Plan:
    if cfg.quick:
        return _Plan(sizes=cfg.sizes or (1_000, 10_000, 100_000), train_seconds=cfg.train_seconds or 5.0,
                     batch_size=16, approx_max=10_000,
                     scaling=dict(catalog_sizes=(500, 2000), history_lengths=(5, 20), base_catalog=500,
                                  batch_size=16, steps=1, model=dict(d_model=64, n_heads=4, d_ff=128)),
                     n_queries=50, ef_grid=(32, 128), nprobe_grid=(16, 64), ivf_train=5_000, tower_requests=10,
                     api=dict(clients=2, requests=5), cold_n=3, feature_items=8, recommender_requests=30,
                     startup_repetitions=1)
    return _Plan(sizes=cfg.sizes or (1_000, 10_000, 100_000, 1_000_000), train_seconds=cfg.train_seconds or 150.0,
                 scaling=dict(catalog_sizes=(1000, 3000, 10000), history_lengths=(5, 10, 20, 40), batch_size=32,
                              steps=2),
                 ivf_train=20_000, api=dict(clients=4, requests=25), cold_n=8, feature_items=128,
                 recommender_requests=200)


def _load_training_data(cfg: BenchConfig) -> tuple[Any, Any]:
    spec = cfg.data or os.environ.get("DTREC_BENCH_DATA", "")
    if spec.startswith("synthetic:"):
        try:
            h, n = (int(float(x)) for x in spec.split(":", 1)[1].lower().split("x"))
        except ValueError:
            raise BenchError(f"--data {spec!r}: write synthetic:<histories>x<items>, "
                             "e.g. synthetic:87346x25986") from None
        return synthetic_training_data(h, n, seed=cfg.seed)
    data = Path(spec or REPO / "data" / "scientific")
    if not (data / "items.parquet").is_file():
        raise BenchError(f"no prepared data at {data}: run `dtrec prepare unisrec` for Scientific or pass --data")
    return load_dataset_features(data, "clip-vit-b-32")


def _resolve_demo(cfg: BenchConfig, tmp: Path, log: Callable[[str], None]) -> Path:
    if cfg.demo:
        return Path(cfg.demo)
    default = REPO / "assets" / "demo"
    if (default / "model").is_dir() and (default / "catalog").is_dir():
        return default
    ml = REPO / "data" / "ml100k"
    if not cfg.quick and (ml / "features" / "offline.safetensors").is_file():
        # the demo's real size and encoder, with random reference-size weights (speed does not depend on them)
        log(f"no assets/demo: building a demo folder from {ml} (offline features, random reference-size model)")
        return bench_demo(tmp / "bench-demo", encoder="offline", reference_size=True, source=ml)
    log("no assets/demo: building a small demo folder from the MovieLens test fixture")
    return bench_demo(tmp / "bench-demo", encoder="tiny-clip", reference_size=not cfg.quick)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the configured sections in this process, writing the report after each; returns the results."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if cfg.threads:
        # On an oversubscribed machine OpenMP threads spin against each other; fewer can be faster.
        torch.set_num_threads(cfg.threads)
        faiss.omp_set_num_threads(cfg.threads)
    plan = _plan(cfg)
    device = resolve_device(cfg.device)
    variants = cfg.train_variants or (TRAIN_VARIANTS if device.type == "cuda" else ("fp32",))
    results: dict[str, Any] = {"quick": cfg.quick, "machine": machine_info(), "config": dataclasses.asdict(cfg),
                               "errors": {}, "seconds": {}}
    previous = Path(cfg.out) / "bench.json"
    if cfg.merge and previous.is_file():
        old = json.loads(previous.read_text())
        stamp = {k: old.get("machine", {}).get(k) for k in ("git_commit", "git_dirty", "time", "load_average")}
        # a section measured now is no longer an earlier run's
        results["merged"] = {k: v for k, v in (old.get("merged") or {}).items() if k not in cfg.only}
        for section in SECTIONS:
            if section not in cfg.only and old.get(section) is not None:
                results[section] = old[section]
                results["merged"].setdefault(section, stamp)
                results["seconds"][section] = old.get("seconds", {}).get(section)
    t_all = time.perf_counter()
    train_data: tuple[Any, Any] | None = None
    interrupted = False

    def need_data() -> tuple[Any, Any]:
        nonlocal train_data
        if train_data is None:
            train_data = _load_training_data(cfg)
        return train_data

    with tempfile.TemporaryDirectory(prefix="dtrec-bench-") as tmp_s:
        tmp = Path(tmp_s)
        demo: Path | None = None

        def get_demo() -> Path:
            nonlocal demo
            if demo is None:
                demo = _resolve_demo(cfg, tmp, log)
            return demo

        for section in SECTIONS:
            if section not in cfg.only:
                continue
            log(f"bench: {section} ...")
            t0 = time.perf_counter()
            try:
                if section == "training":
                    ds, feats = need_data()
                    results["training"] = {}  # filled run by run: an interrupt keeps what was measured
                    measure_training(ds, feats, batch_size=cfg.batch_size or plan.batch_size, epochs=cfg.epochs,
                                     max_seconds=plan.train_seconds, device=device, variants=variants,
                                     pad_multiple=cfg.pad_multiple, seed=cfg.seed, out=results["training"])
                elif section == "serving":
                    results["serving"] = _serving(cfg, plan, device, need_data, get_demo, log)
                elif section == "api":
                    results["api"] = measure_api(get_demo(), seed=cfg.seed, threads=cfg.threads, **plan.api)
                elif section == "startup":
                    results["startup"] = measure_startup(get_demo(), repetitions=plan.startup_repetitions,
                                                         threads=cfg.threads)
                elif section == "cold_start":
                    results["cold_start"] = measure_cold_start(get_demo(), n=plan.cold_n, seed=cfg.seed)
                elif section == "features":
                    encs = []
                    for name in cfg.encoders:
                        try:
                            encs.append(measure_feature_extraction(name, n_items=plan.feature_items, device=device,
                                                                   seed=cfg.seed))
                        except (FileNotFoundError, ValueError, ImportError) as e:
                            encs.append({"encoder": name, "error": str(e)})
                    results["features"] = {"encoders": encs}
                elif section == "scaling":
                    results["scaling"] = measure_training_scaling(device=device, seed=cfg.seed, **plan.scaling)
            except KeyboardInterrupt:  # Ctrl-C or `timeout --signal=INT`: keep what was measured, then stop
                results["errors"][section] = "interrupted; the runs listed were measured before the interrupt"
                log(f"bench: {section} interrupted; writing what was measured")
                interrupted = True
            except Exception as e:  # one failed section must not lose the others' numbers
                results["errors"][section] = f"{type(e).__name__}: {e}"
                log(f"bench: {section} failed: {e}")
            results["seconds"][section] = round(time.perf_counter() - t0, 1)
            results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
            results["total_seconds"] = round(time.perf_counter() - t_all, 1)
            write_report(results, cfg.out)
            if interrupted:
                raise KeyboardInterrupt
    return results


def _serving(cfg: BenchConfig, plan: _Plan, device: torch.device, need_data: Callable, get_demo: Callable,
             log: Callable[[str], None]) -> dict[str, Any]:
    try:
        ds, feats = need_data()
    except BenchError:  # no real data: the user tower runs on synthetic features (same cost)
        ds, feats = synthetic_training_data(256, 2000, seed=cfg.seed)
    # the user tower keeps each history's last max_len items itself
    histories = ([h for h, _ in ds.eval_cases("test")][:256] if hasattr(ds, "eval_cases")
                 else ds.train_sequences()[:256])
    torch.manual_seed(cfg.seed)
    model = DualTower(ModelConfig(encoder=feats.encoder, modality_dims=feats.dims)).to(device).eval()
    out = measure_serving(plan.sizes if cfg.sizes is None else cfg.sizes, model, feats.to(device), histories,
                          kinds=cfg.kinds, n_queries=plan.n_queries, seed=cfg.seed, progress=log,
                          ef_grid=plan.ef_grid, nprobe_grid=plan.nprobe_grid, ivf_train=plan.ivf_train,
                          tower_requests=plan.tower_requests, approx_max=plan.approx_max)
    try:
        out["recommender"] = measure_recommender(get_demo(), requests=plan.recommender_requests, seed=cfg.seed)
    except Exception as e:  # the index numbers stand without it
        out["recommender_error"] = f"{type(e).__name__}: {e}"
    return out
