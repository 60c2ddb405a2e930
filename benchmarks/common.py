"""What every benchmark shares: the machine stamp, latency summaries, peak memory, the device.

The benchmarks are the project's measuring lab, kept outside the installed `dtrec` package:
they read the repository (its git state, fixtures, prepared data, `app.py`) and time
dtrec's own code. Run them with `python -m benchmarks` from the repository root.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np
import torch

from dtrec.provenance import git_commit, git_dirty

REPO = Path(__file__).resolve().parents[1]


class BenchError(ValueError):
    """A benchmark that cannot run with the given inputs (one sentence)."""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model and cores, GPU name, library versions, load average and the git commit of this run."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf") else None,
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": getattr(faiss, "__version__", "unknown"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "git_commit": git_commit(REPO) or "unknown",
        "git_dirty": git_dirty(REPO),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def latency_summary(ms: list[float] | np.ndarray) -> dict[str, float]:
    """p50 / p95 / p99 / mean / min of latencies in milliseconds, and their count."""
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min())}


def sync(device: torch.device) -> None:
    """Wait for `device`'s queued work (CUDA), so that a clock read after it times the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS, so that the next run's RSS rise is its own (glibc only)."""
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@contextlib.contextmanager
def peak_memory(device: torch.device | str = "cpu", interval: float = 0.005) -> Iterator[dict[str, Any]]:
    """Peak memory of the enclosed block: CUDA max allocated, or the peak rise of this process's RSS.

    On CPU a thread samples /proc/self/statm every `interval` seconds (ru_maxrss is a
    high-water mark for the whole process, useless for a second run in the same one);
    freed heap memory is handed back to the OS first, or a second run would reuse it unseen.
    """
    device = torch.device(device)
    out: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        try:
            yield out
        finally:
            torch.cuda.synchronize(device)
            out.update(kind="cuda_max_memory_allocated",
                       peak_mb=round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1))
        return
    _release_freed_memory()
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()
        peak[0] = max(peak[0], _rss_bytes())
        out.update(kind="rss_peak_delta", peak_mb=round((peak[0] - base) / 2**20, 1))
