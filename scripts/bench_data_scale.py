"""Data at scale: prepare / extract / evaluate times and peak memory, the feature cache's size and load time.

    python scripts/bench_data_scale.py --data ../shared/data/seqrec-text/food --out docs/bench/data-scale.json
    python scripts/bench_data_scale.py --synthetic-only      # evaluate at 10^5 items x 5*10^4 users only

Each stage runs the real `dtrec` command in a child process, so its peak RSS is the command's own
(`os.wait4`). Steps:

1. `dtrec prepare jsonl` of the domain (gz inputs).
2. `dtrec extract --encoder offline`, interrupted with SIGINT after `--interrupt-after` seconds
   (past the extractor's first checkpoint) and run again: the second run must resume, not restart.
3. The cache on disk against the dense layout of earlier versions (one row per item and modality),
   and the load time of both, alternating in this process (a ratio, since the machine is shared).
4. `dtrec evaluate` of popularity (both protocols) and of an untrained DualTower of the recipes'
   CPU size (its scoring cost) on the domain; then popularity with the history hidden on a
   synthetic 10^5-item, 5*10^4-user data set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dtrec.provenance import git_commit, git_dirty  # noqa: E402


def run(cmd: list[str], interrupt_after: float | None = None) -> dict:
    """Run `python -m dtrec.cli CMD`; wall seconds, peak RSS (MiB), exit code and the output's last lines."""
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")
    # A shell's background job starts with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: restore the default so the interrupt below acts as a Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-m", "dtrec.cli", *cmd], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if interrupt_after is not None:
        try:
            proc.wait(timeout=interrupt_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.seek(0)
    lines = [ln for ln in log.read().replace("\r", "\n").splitlines() if ln.strip()]
    out = {"command": "dtrec " + " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "exit_code": proc.returncode,
           "last_lines": lines[-3:]}
    notes = [ln for ln in lines if ln.startswith(("resuming", "interrupted"))]
    if notes:
        out["notes"] = notes
    print(json.dumps(out), flush=True)
    return out


def cache_sizes_and_load(data_dir: Path, encoder: str, rounds: int = 5) -> dict:
    """Bytes of the compact cache and of the same features in the dense layout; load times of both."""
    import torch
    from safetensors.torch import save_file

    from dtrec.features import Features, cache_path

    path = cache_path(data_dir, encoder)
    feats = Features.load(path)
    dense = path.with_name("dense-layout.safetensors")
    tensors = {}
    for m in feats.modalities:
        tensors[m] = feats.values[m].contiguous()
        tensors[f"{m}_present"] = feats.present[m].to(torch.uint8)
    save_file(tensors, str(dense), metadata={"encoder": feats.encoder, "fingerprint": feats.fingerprint,
                                             "dims": json.dumps(feats.dims)})
    times: dict[str, list[float]] = {"compact": [], "dense": []}
    for _ in range(rounds):  # alternate, so both see the same machine load
        for name, p in (("compact", path), ("dense", dense)):
            t0 = time.perf_counter()
            loaded = Features.load(p)
            for m in loaded.modalities:  # touch every value: a memory-mapped read is not a load
                float(loaded.values[m].sum())
            times[name].append(time.perf_counter() - t0)
    out = {"items": len(feats), "present": {m: int(feats.present[m].sum()) for m in feats.modalities},
           "dims": feats.dims, "compact_bytes": path.stat().st_size, "dense_bytes": dense.stat().st_size,
           "compact_load_s": statistics.median(times["compact"]), "dense_load_s": statistics.median(times["dense"])}
    dense.unlink()
    print(json.dumps(out), flush=True)
    return out


def synthetic_dataset(out: Path, n_items: int, n_users: int, seed: int = 0) -> None:
    """A titles-only catalog of `n_items` and `n_users` random histories of 5..30 items, in the prepared layout."""
    import numpy as np

    from dtrec.data.catalog import Catalog, Dataset, Interactions, Item

    rng = np.random.default_rng(seed)
    pop = rng.zipf(1.2, size=n_items * 4) % n_items  # a long-tailed item popularity
    seqs = [pop[rng.integers(0, len(pop), size=int(rng.integers(5, 31)))].tolist() for _ in range(n_users)]
    Dataset(Catalog([Item(f"i{i}", f"item {i}", "") for i in range(n_items)]),
            Interactions([f"u{u}" for u in range(n_users)], seqs), name="synthetic").save(out)


def untrained_checkpoint(data_dir: Path, encoder: str, out: Path) -> None:
    """A randomly initialised DualTower of the recipes' CPU size for `encoder`'s features (scoring cost only)."""
    import torch

    from dtrec.config import ModelConfig
    from dtrec.features import load_features
    from dtrec.model import DualTower

    torch.manual_seed(0)
    feats = load_features(data_dir, encoder)
    DualTower(ModelConfig(encoder=encoder, modality_dims=feats.dims, d_model=128, d_ff=256, n_heads=4)
              ).save_pretrained(out)


def provenance() -> dict:
    """Where and from what the numbers come."""
    return {"git_commit": git_commit(REPO) or "", "dirty": bool(git_dirty(REPO)), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_start": os.getloadavg()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "seqrec-text" / "food"),
                   help="folder with items.jsonl.gz + interactions.csv.gz (default: the food domain)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--encoder", default="offline")
    p.add_argument("--interrupt-after", type=float, default=150.0,
                   help="seconds before the first extraction is interrupted (past its 120 s checkpoint)")
    p.add_argument("--synthetic-items", type=int, default=100_000)
    p.add_argument("--synthetic-users", type=int, default=50_000)
    p.add_argument("--synthetic-only", action="store_true")
    p.add_argument("--cache-only", metavar="DIR", default=None,
                   help="only measure the cache of the prepared DIR and update the 'cache' entry of --out")
    args = p.parse_args()
    if args.cache_only:
        res = json.loads(Path(args.out).read_text()) if args.out and Path(args.out).is_file() else {}
        res["cache"] = cache_sizes_and_load(Path(args.cache_only), args.encoder)
        res["cache"]["provenance"] = provenance()
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="dtrec-scale-"))
    res: dict = {"provenance": provenance(), "source": args.data}
    pop_args = ["baseline", "popularity"]
    if not args.synthetic_only:
        src, d = Path(args.data), work / "domain"
        res["prepare"] = run(["prepare", "jsonl", "--items", str(src / "items.jsonl.gz"),
                              "--interactions", str(src / "interactions.csv.gz"), "--out", str(d)])
        res["extract_interrupted"] = run(["extract", str(d), "--encoder", args.encoder],
                                         interrupt_after=args.interrupt_after)
        res["extract_resumed"] = run(["extract", str(d), "--encoder", args.encoder])
        if res["extract_interrupted"]["exit_code"] != 130 or not res["extract_resumed"].get("notes"):
            print("warning: the extraction was not interrupted and resumed as planned", file=sys.stderr)
        res["cache"] = cache_sizes_and_load(d, args.encoder)
        res["baseline_popularity"] = run([*pop_args, "--data", str(d), "--out", str(work / "pop")])
        untrained_checkpoint(d, args.encoder, work / "untrained")
        for name, ckpt, flags in (("popularity", work / "pop", ([], ["--exclude-history"])),
                                  ("dtrec_untrained", work / "untrained", ([],))):
            for flag in flags:
                key = f"evaluate_{name}" + ("_serving" if flag else "")
                res[key] = run(["evaluate", "--checkpoint", str(ckpt), "--data", str(d), "--json", *flag])
    s = work / "synthetic"
    t0 = time.perf_counter()
    synthetic_dataset(s, args.synthetic_items, args.synthetic_users)
    res["synthetic"] = {"items": args.synthetic_items, "users": args.synthetic_users,
                        "build_seconds": round(time.perf_counter() - t0, 1)}
    run([*pop_args, "--data", str(s), "--out", str(work / "spop")])
    res["evaluate_synthetic_popularity_serving"] = run(
        ["evaluate", "--checkpoint", str(work / "spop"), "--data", str(s), "--json", "--exclude-history"])
    res["provenance"]["load_average_end"] = os.getloadavg()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
