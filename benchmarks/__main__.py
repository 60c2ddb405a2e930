"""`python -m benchmarks [--quick] [--only SECTIONS] ...`: dtrec's speed, memory and scale, from the repository root."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.run import SECTIONS, BenchConfig, run_bench


def build_parser() -> argparse.ArgumentParser:
    """The flags of `python -m benchmarks`."""
    b = argparse.ArgumentParser(prog="python -m benchmarks",
                                description="speed, memory and scale of training and serving, beside the baselines")
    b.add_argument("--quick", action="store_true", help="small sizes (catalogs up to 10^5); about a minute or two")
    b.add_argument("--out", default="docs/bench", help="folder for bench.json, bench.md and bench.png")
    b.add_argument("--only", default=None,
                   help=f"comma-separated sections: {','.join(SECTIONS)} (default: all)")
    b.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    b.add_argument("--data", default=None,
                   help="prepared data with clip-vit-b-32 features for training (default: data/scientific), "
                        "or synthetic:<histories>x<items> for random data of that size")
    b.add_argument("--demo", default=None, help="demo folder for the API and cold-start runs (default: assets/demo)")
    b.add_argument("--sizes", default=None, help="serving catalog sizes, e.g. 1e3,1e4,1e5,1e6")
    b.add_argument("--variants", default=None, help="training variants fp32,bf16,compile (default: fp32; all on CUDA)")
    b.add_argument("--batch-size", type=int, default=None,
                   help="training batch size, the same for dtrec and SASRec (default: 256; 16 with --quick)")
    b.add_argument("--epochs", type=int, default=1, help="training epochs timed per model (within --train-seconds)")
    b.add_argument("--pad-multiple", type=int, default=1,
                   help="round training batch widths up to a multiple, for dtrec and SASRec alike (default 1)")
    b.add_argument("--train-seconds", type=float, default=None,
                   help="time budget per training run; seconds/epoch are extrapolated beyond it")
    b.add_argument("--encoders", default=None,
                   help="encoders for the feature-extraction section, comma-separated (default: offline,tiny-clip; "
                        "clip:<model>:random times a CLIP architecture without its weights)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch and FAISS CPU threads (default: one per core; 1 can be faster on a busy machine)")
    b.add_argument("--merge", action="store_true",
                   help="keep the sections of an earlier OUT/bench.json that this run (--only) does not measure")
    b.add_argument("--seed", type=int, default=0)
    return b


def _names(value: str | None) -> tuple[str, ...] | None:
    return tuple(s.strip() for s in value.split(",") if s.strip()) if value else None


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig the flags describe (a ValueError, one sentence, for a bad value)."""
    try:
        sizes = tuple(int(float(s)) for s in args.sizes.split(",")) if args.sizes else None
    except ValueError:
        raise ValueError(f"--sizes {args.sizes!r}: write comma-separated numbers, e.g. 1e3,1e4,1e5") from None
    encoders = _names(args.encoders)
    return BenchConfig(quick=args.quick, out=args.out, only=_names(args.only) or SECTIONS, device=args.device,
                       data=args.data, demo=args.demo, sizes=sizes, train_variants=_names(args.variants),
                       batch_size=args.batch_size, epochs=args.epochs, pad_multiple=args.pad_multiple,
                       train_seconds=args.train_seconds, threads=args.threads, merge=args.merge, seed=args.seed,
                       **({"encoders": encoders} if encoders else {}))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print each target's state and where the report went. Bad flags print one line, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"python -m benchmarks: error: {e}", file=sys.stderr)
        return 2
    results = run_bench(cfg)
    for t in results.get("targets", []):
        state = "–" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"{state:>8}  {t['target']}: {t['value']}")
    for name, err in results.get("errors", {}).items():
        print(f"  failed  {name}: {err}")
    print(f"wrote {Path(cfg.out) / 'bench.md'}, bench.json, bench.png in {results.get('total_seconds')} s")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
