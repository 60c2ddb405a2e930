"""Serving speed: exact vs approximate indexes at several catalog sizes, the user tower,
`Recommender.recommend`, the Gradio HTTP API under concurrent clients, and `add_item` by stage."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import faiss
import numpy as np

import dtrec.service as service
from benchmarks.common import REPO, BenchError, latency_summary, sync
from benchmarks.data import synthetic_embeddings, synthetic_jpeg
from benchmarks.report import TARGET_ANN_RECALL
from dtrec.config import ServeConfig
from dtrec.features import load_features
from dtrec.index import ItemIndex
from dtrec.service import Recommender


# ====================================================================== index
def _single_latencies(index: Any, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:
    ms, ids = [], []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        _, got = index.search(queries[i:i + 1], k)
        ms.append(1000 * (time.perf_counter() - t0))
        row = np.full(k, -1, np.int64)
        row[: got.shape[1]] = got[0]
        ids.append(row)
    return ms, np.stack(ids)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def _batched_qps(index: Any, queries: np.ndarray, k: int, batch: int) -> float:
    reps = int(math.ceil(batch / len(queries)))
    q = np.concatenate([queries] * reps)[:batch]
    index.search(q[:8], k)
    t0 = time.perf_counter()
    index.search(q, k)
    return batch / (time.perf_counter() - t0)


def measure_index(vectors: np.ndarray, queries: np.ndarray, *, kinds: tuple[str, ...] = ("flat", "hnsw", "ivfpq"),
                  k: int = 10, ef_grid: tuple[int, ...] = (16, 32, 64, 128, 256),
                  nprobe_grid: tuple[int, ...] = (8, 16, 32, 64), k_factor_grid: tuple[int, ...] = (1, 8, 32, 64),
                  refine: str = "sq8", target_recall: float = TARGET_ANN_RECALL,
                  batch: int = 256, hnsw_m: int = 32, ef_construction: int = 40, ivf_train: int = 100_000,
                  ivf_min_items: int = 10_000, flat_queries: int | None = None,
                  tower: Callable[[int], np.ndarray] | None = None, tower_requests: int = 50,
                  seed: int = 0) -> dict[str, Any]:
    """Exact vs HNSW vs IVF-PQ `ItemIndex` over `vectors`: build time, single-query latency, batched
    queries/s and recall@k against exact search, tuning efSearch to the smallest value that reaches
    `target_recall` and IVF-PQ's (nprobe, k_factor) to the fastest pair that does. With
    `tower(i) -> (1, d)` also times user tower + search per request."""
    n, dim = vectors.shape
    ids = np.arange(n, dtype=np.int64)
    out: dict[str, Any] = {"n": int(n), "dim": int(dim), "k": k, "queries": int(len(queries)), "kinds": {}}

    def pipeline(index: Any) -> dict[str, float]:
        if tower is None:
            return {}
        ms = []
        for i in range(tower_requests + 3):
            t0 = time.perf_counter()
            index.search(tower(i), k)
            ms.append(1000 * (time.perf_counter() - t0))
        return latency_summary(ms[3:])

    t0 = time.perf_counter()
    flat = ItemIndex.build(ids, vectors, "flat")
    build_s = time.perf_counter() - t0
    _, truth = flat.search(queries, k)
    if "flat" in kinds:
        fq = queries[: flat_queries or len(queries)]
        flat.search(fq[:2], k)
        ms, _ = _single_latencies(flat, fq, k)
        out["kinds"]["flat"] = {"build_s": build_s, "recall": 1.0, "setting": None, **latency_summary(ms),
                                "batched_qps": _batched_qps(flat, queries, k, batch),
                                "pipeline": pipeline(flat)}
    del flat

    if "hnsw" in kinds:
        t0 = time.perf_counter()
        index = ItemIndex.build(ids, vectors, "hnsw", hnsw_m=hnsw_m, ef_construction=ef_construction)
        build_s = time.perf_counter() - t0
        sweep = []
        for ef in ef_grid:
            index.params["ef_search"] = ef
            index.search(queries[:2], k)
            ms, found = _single_latencies(index, queries, k)
            sweep.append({"ef_search": ef, "recall": _recall(found, truth), **latency_summary(ms)})
        best = next((s for s in sweep if s["recall"] >= target_recall), max(sweep, key=lambda s: s["recall"]))
        index.params["ef_search"] = best["ef_search"]
        out["kinds"]["hnsw"] = {"build_s": build_s, "M": hnsw_m, "ef_construction": ef_construction,
                                "setting": {"ef_search": best["ef_search"]},
                                **{k_: v for k_, v in best.items() if k_ != "ef_search"},
                                "batched_qps": _batched_qps(index, queries, k, batch), "sweep": sweep,
                                "pipeline": pipeline(index)}
        del index

    if "ivfpq" in kinds:
        if n < ivf_min_items:
            out["kinds"]["ivfpq"] = {"skipped": f"below ivfpq_min_items ({ivf_min_items}): the service uses exact"}
        else:
            t0 = time.perf_counter()
            index = ItemIndex(dim, "ivfpq", ivfpq_min_items=0, refine=refine)
            sample = np.random.default_rng(seed).choice(n, min(n, ivf_train), replace=False)
            index.train(vectors[np.sort(sample)])
            index.add(ids, vectors)
            build_s = time.perf_counter() - t0
            inner = faiss.downcast_index(index.index.index)
            base = faiss.downcast_index(inner.base_index) if refine != "none" else inner
            sweep = []
            # k_factor 1 re-ranks only the k PQ hits, so its recall is that of PQ codes alone
            for p in nprobe_grid:
                for kf in (k_factor_grid if refine != "none" else (1,)):
                    if p > base.nlist:
                        continue
                    index.params.update(nprobe=p, k_factor=kf)  # search() applies them
                    index.search(queries[:2], k)
                    ms, found = _single_latencies(index, queries, k)
                    sweep.append({"nprobe": p, "k_factor": kf, "recall": _recall(found, truth), **latency_summary(ms)})
            good = [s_ for s_ in sweep if s_["recall"] >= target_recall]
            best = min(good, key=lambda s_: s_["p50_ms"]) if good else max(sweep, key=lambda s_: s_["recall"])
            index.params.update(nprobe=best["nprobe"], k_factor=best["k_factor"])
            code_bytes = int(base.pq.M) + {"none": 0, "sq8": dim, "flat": 4 * dim}[refine]
            out["kinds"]["ivfpq"] = {"build_s": build_s, "nlist": int(base.nlist), "pq_m": int(base.pq.M),
                                     "refine": refine, "bytes_per_vector": code_bytes,
                                     "trained_on": int(len(sample)),
                                     "setting": {"nprobe": best["nprobe"], "k_factor": best["k_factor"],
                                                 "refine": refine},
                                     **{k_: v for k_, v in best.items() if k_ not in ("nprobe", "k_factor")},
                                     "batched_qps": _batched_qps(index, queries, k, batch), "sweep": sweep,
                                     "pipeline": pipeline(index)}
            del index
    return out


def measure_user_tower(model: Any, features: Any, histories: list[list[int]], *, batch: int = 256,
                       requests: int = 50) -> dict[str, Any]:
    """User-tower latency for one history per call, and histories/s when `batch` are encoded together."""
    device = model.device
    model.eval()
    ms = []
    for i in range(requests + 3):
        t0 = time.perf_counter()
        model.user_embeddings([histories[i % len(histories)]], features)
        sync(device)
        ms.append(1000 * (time.perf_counter() - t0))
    hs = [histories[i % len(histories)] for i in range(batch)]
    model.user_embeddings(hs[:8], features)
    t0 = time.perf_counter()
    model.user_embeddings(hs, features)
    sync(device)
    return {"single": latency_summary(ms[3:]), "batch": batch, "batched_per_s": batch / (time.perf_counter() - t0),
            "device": str(device)}


def measure_serving(sizes: tuple[int, ...], model: Any, features: Any, histories: list[list[int]], *,
                    kinds: tuple[str, ...] = ("flat", "hnsw", "ivfpq"), n_queries: int = 200, batch: int = 256,
                    seed: int = 0, approx_max: int | None = None, progress: Callable[[str], None] | None = None,
                    **index_kw: Any) -> dict[str, Any]:
    """Index measurements at each catalog size (synthetic item embeddings) plus the user tower + search
    pipeline; the tower runs on real histories of `features` (its cost does not depend on catalog size).
    Approximate kinds are built only up to `approx_max` items (None: at every size)."""
    dim = int(model.config.d_model)
    model.eval()

    def tower(i: int) -> np.ndarray:
        return model.user_embeddings([histories[i % len(histories)]], features).float().cpu().numpy()

    out: dict[str, Any] = {"user_tower": measure_user_tower(model, features, histories, batch=batch),
                           "dim": dim, "generator": "synthetic_embeddings (clustered, 64-d latent)", "sizes": []}
    queries = synthetic_embeddings(n_queries, dim, seed=seed + 1)
    for n in sizes:
        if progress:
            progress(f"serving: {n:,} items")
        vecs = synthetic_embeddings(n, dim, seed=seed)
        flat_q = min(n_queries, max(20, int(2e7 // max(n, 1))))  # exact single queries get slow at 10^6
        size_kinds = kinds if approx_max is None or n <= approx_max else tuple(k for k in kinds if k == "flat")
        out["sizes"].append(measure_index(vecs, queries, kinds=size_kinds, batch=batch, tower=tower,
                                          flat_queries=flat_q, seed=seed, **index_kw))
        del vecs
    return out


def _history_rows(rec: Any, n: int, seed: int) -> list[list[str]]:
    hs = [h for h in (rec.sample_history(seed=seed + i) for i in range(n)) if h]
    if not hs:
        ids = [v.id for v in rec.list_items(limit=200)]
        r = random.Random(seed)
        hs = [r.sample(ids, min(len(ids), 5)) for _ in range(n)]
    return hs


def measure_recommender(demo_dir: str | Path, *, requests: int = 100, k: int = 10, batch: int = 256,
                        index: str = "flat", seed: int = 0) -> dict[str, Any]:
    """`Recommender.recommend` latency (one request at a time) and batched user tower + `ItemIndex` throughput."""
    with tempfile.TemporaryDirectory(prefix="dtrec-bench-store-") as store:
        t0 = time.perf_counter()
        rec = Recommender.from_folder(demo_dir, store_dir=store, config=ServeConfig(index=index))
        start_s = time.perf_counter() - t0
        try:
            hs = _history_rows(rec, requests, seed)
            for h in hs[:3]:
                rec.recommend(h, k=k)
            wall, inner = [], []
            for i in range(requests):
                t0 = time.perf_counter()
                res = rec.recommend(hs[i % len(hs)], k=k)
                wall.append(1000 * (time.perf_counter() - t0))
                inner.append(res.latency_ms)
            # batched: the same towers and index the service holds, many histories per call
            feats = load_features(rec.config.catalog, rec.encoder_name, rec.catalog).to(rec.model.device)
            rows = [[rec.catalog.index_of(i) for i in h if rec.catalog.has(i)] for h in hs]
            rows = [r for r in rows if r]
            qs = [rows[i % len(rows)] for i in range(batch)]
            rec.index.search(rec.model.user_embeddings(qs[:8], feats).cpu().numpy(), k)
            t0 = time.perf_counter()
            u = rec.model.user_embeddings(qs, feats).float().cpu().numpy()
            rec.index.search(u, k)
            batched = batch / (time.perf_counter() - t0)
            about = rec.about()
        finally:
            rec.close()
    return {"demo": str(demo_dir), "items": about.get("n_items"), "encoder": about.get("encoder"),
            "d_model": about.get("d_model"), "index": index, "device": about.get("device"), "startup_s": start_s,
            "recommend": latency_summary(wall), "recommend_reported": latency_summary(inner),
            "batched_per_s": batched, "batch": batch}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def launched_app(demo_dir: str | Path, *, app: str | Path | None = None, timeout: float = 180.0,
                 store_dir: str | Path | None = None, threads: int | None = None,
                 poll_s: float = 0.5) -> Iterator[str]:
    """`app.py` serving `demo_dir` on a free local port in a child process; yields its URL once `/config`
    answers (asked every `poll_s`)."""
    app = Path(app) if app else REPO / "app.py"
    if not app.is_file():
        raise BenchError(f"{app} not found: the API benchmark needs the repository's app.py")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(REPO))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch and FAISS in the app honour it
    with tempfile.TemporaryDirectory(prefix="dtrec-bench-app-") as tmp:
        log = open(Path(tmp) / "app.log", "w+b")
        cmd = [sys.executable, str(app), "--demo", str(demo_dir), "--port", str(port), "--host", "127.0.0.1",
               "--store-dir", str(store_dir or Path(tmp) / "store")]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
                    raise BenchError(f"app.py exited with status {proc.returncode}: {' | '.join(tail)}")
                try:
                    with urllib.request.urlopen(f"{url}/config", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise BenchError(f"app.py did not answer on {url} within {timeout:.0f} s")
                time.sleep(poll_s)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _import_gradio_s(env: dict[str, str]) -> float:
    """Wall time of a fresh `python -c "import gradio"`: the yardstick start-up is divided by."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gradio"], env=env, check=True, cwd=str(REPO),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure_startup(demo_dir: str | Path, *, repetitions: int = 3, app: str | Path | None = None,
                    threads: int | None = None) -> dict[str, Any]:
    """Time-to-ready of a fresh `app.py` process (launch until `/config` answers): a first start over an
    empty store and a restart over the store it left, `repetitions` times, each beside a bare
    `python -c "import gradio"` in a fresh process, so that the ratios hold on a busy machine."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    first, restart, gradio = [], [], []
    for _ in range(repetitions):
        gradio.append(_import_gradio_s(env))
        with tempfile.TemporaryDirectory(prefix="dtrec-bench-startup-") as store:
            for times in (first, restart):
                t0 = time.perf_counter()
                with launched_app(demo_dir, app=app, store_dir=store, threads=threads, poll_s=0.1):
                    times.append(time.perf_counter() - t0)

    def summary(xs: list[float]) -> dict[str, Any]:
        return {"median_s": float(np.median(xs)), "min_s": min(xs), "max_s": max(xs), "runs": xs}

    g = float(np.median(gradio))
    return {"demo": str(demo_dir), "repetitions": repetitions, "app_threads": threads,
            "first": summary(first), "restart": summary(restart), "import_gradio": summary(gradio),
            "first_vs_import_gradio": float(np.median(first)) / g,
            "restart_vs_import_gradio": float(np.median(restart)) / g}


def measure_api(demo_dir: str | Path, *, clients: int = 4, requests: int = 25, k: int = 10, seed: int = 0,
                app: str | Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """End-to-end `/recommend` latency through the Gradio HTTP API: one client, then `clients` at once."""
    from gradio_client import Client  # the demo extra: only this section needs it

    with tempfile.TemporaryDirectory(prefix="dtrec-bench-hist-") as store:
        rec = Recommender.from_folder(demo_dir, store_dir=store)
        try:
            hs = _history_rows(rec, max(requests, 10), seed)
            n_items = len(rec.index)
        finally:
            rec.close()
    t0 = time.perf_counter()
    with launched_app(demo_dir, app=app, threads=threads) as url:
        startup_s = time.perf_counter() - t0
        with contextlib.redirect_stdout(io.StringIO()):
            pool = [Client(url, verbose=False) for _ in range(clients)]

        def call(c: Any, h: list[str]) -> float:
            t = time.perf_counter()
            res = c.predict(json.dumps(h), k, api_name="/recommend")
            if not isinstance(res, list) or len(res) == 0:
                raise BenchError(f"/recommend answered {str(res)[:80]!r}")
            return 1000 * (time.perf_counter() - t)

        for h in hs[:3]:
            call(pool[0], h)
        single = [call(pool[0], hs[i % len(hs)]) for i in range(requests)]
        http = _raw_http_latencies(url, hs, requests, k)
        results: list[list[float]] = [[] for _ in range(clients)]
        errors: list[BaseException] = []

        def worker(j: int) -> None:
            try:
                for i in range(requests):
                    results[j].append(call(pool[j], hs[(i + j * 7) % len(hs)]))
            except BaseException as e:  # surfaced below; a thread must not die silently
                errors.append(e)

        workers = [threading.Thread(target=worker, args=(j,)) for j in range(clients)]
        t0 = time.perf_counter()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        wall = time.perf_counter() - t0
        for c in pool:
            with contextlib.suppress(Exception):
                c.close()
        if errors:
            raise BenchError(f"a concurrent API client failed: {errors[0]}")
    allc = [x for r in results for x in r]
    return {"demo": str(demo_dir), "items": n_items, "endpoint": "/recommend", "k": k, "startup_s": startup_s,
            "app_threads": threads,
            "single_client": latency_summary(single), "clients": clients,
            "single_http": latency_summary(http) if http else None,
            "concurrent": latency_summary(allc), "throughput_rps": len(allc) / wall}


def _raw_http_latencies(url: str, histories: list[list[str]], requests: int, k: int) -> list[float]:
    """`/recommend` as one plain HTTP POST per request (what any client pays), without gradio_client's own work."""
    import httpx  # comes with gradio, as gradio_client does

    out = []
    with httpx.Client(timeout=60) as c:
        for i in range(requests):
            t = time.perf_counter()
            r = c.post(url.rstrip("/") + "/gradio_api/run/recommend", json={"data": [histories[i % len(histories)], k]})
            if r.status_code != 200 or not r.json().get("data"):
                raise BenchError(f"POST /gradio_api/run/recommend answered {r.status_code}: {r.text[:80]!r}")
            out.append(1000 * (time.perf_counter() - t))
    return out


# ====================================================================== cold start
def measure_cold_start(demo_dir: str | Path, *, n: int = 8, image_px: tuple[int, int] = (300, 450),
                       seed: int = 0) -> dict[str, Any]:
    """`Recommender.add_item` latency with and without an image, split into its stages."""
    # (holder: an attribute of the Recommender, or a module, attribute): the upload's validation is a function
    # of dtrec.serving.uploads that dtrec.service calls by name
    stages = {"decode": (service, "read_image"), "encode": ("encoder", "encode"), "item_tower": ("encoder", "embed"),
              "store": ("store", "add"), "index": ("index", "add"), "index_save": ("store", "save_index")}
    with tempfile.TemporaryDirectory(prefix="dtrec-bench-cold-") as store:
        rec = Recommender.from_folder(demo_dir, store_dir=store)
        current: dict[str, float] = {}
        originals: list[tuple[Any, str, Any]] = []

        def wrap(owner: Any, attr: str, stage: str) -> None:
            fn = getattr(owner, attr)
            originals.append((owner, attr, fn))

            def timed(*a: Any, **kw: Any) -> Any:
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    current[stage] = current.get(stage, 0.0) + 1000 * (time.perf_counter() - t)

            setattr(owner, attr, timed)  # an instance attribute profiles this object only; a module's is put back

        wrapped = []
        for stage, (holder, attr) in stages.items():
            owner = getattr(rec, holder, None) if isinstance(holder, str) else holder
            if owner is not None and hasattr(owner, attr):
                wrap(owner, attr, stage)
                wrapped.append(stage)
        try:
            out: dict[str, Any] = {"demo": str(demo_dir), "encoder": rec.encoder_name, "stages_timed": wrapped}
            for label, with_image in (("without_image", False), ("with_image", True)):
                rows = []
                for i in range(n + 1):
                    current.clear()
                    img = synthetic_jpeg(*image_px, seed=seed + i) if with_image else None
                    t = time.perf_counter()
                    _, ms = rec.add_item(f"Bench item {label} {i}", "A synthetic item for the benchmark.", image=img)
                    total = 1000 * (time.perf_counter() - t)
                    rows.append({"total_ms": total, "reported_ms": ms, **current})
                first, rest = rows[0], rows[1:]
                stage_ms = {s: float(np.mean([r.get(s, 0.0) for r in rest])) for s in wrapped}
                # the timed stages do not nest, so what they leave is validation, thumbnail, locks, eviction
                stage_ms["other"] = float(np.mean([r["total_ms"] - sum(r.get(s, 0.0) for s in wrapped)
                                                   for r in rest]))
                out[label] = {"first_call_ms": first["total_ms"], **latency_summary([r["total_ms"] for r in rest]),
                              "stages_mean_ms": stage_ms}
                if with_image:
                    out[label]["image_px"] = list(image_px)
        finally:
            for owner, attr, fn in reversed(originals):
                setattr(owner, attr, fn)
            rec.close()
    return out
