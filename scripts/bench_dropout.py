"""A/B of dtrec's CPU dropout (dtrec/model/dropout.py) against nn.Dropout, in one process.

    python scripts/bench_dropout.py                 # Scientific, batch 256, 2 rounds
    python scripts/bench_dropout.py --rounds 3 --batch-size 1024

Times one epoch of the fine-tuning step (`benchmarks.training.train_dtrec_steps`) and of the same-size
SASRec (`train_sasrec_steps`) with both models built on PyTorch's dropout, then on dtrec's,
alternating the order round by round so both see the same machine noise; prints the medians.
Needs the prepared Scientific data (data/scientific, or --data).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import benchmarks.training as B  # noqa: E402
import dtrec.baselines.sasrec as sasrec_module  # noqa: E402
import dtrec.model.fusion as fusion_module  # noqa: E402
from dtrec.config import ModelConfig  # noqa: E402
from dtrec.data.catalog import Dataset  # noqa: E402
from dtrec.features import load_features  # noqa: E402
from dtrec.model.dropout import use_fast_dropout  # noqa: E402
from dtrec.sequences import build_examples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO / "data" / "scientific"))
    ap.add_argument("--encoder", default="clip-vit-b-32")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    ds = Dataset.load(args.data)
    feats = load_features(args.data, args.encoder, ds.catalog)
    cfg = ModelConfig(encoder=feats.encoder, modality_dims=feats.dims)
    examples, seqs = build_examples(ds.train_sequences(), cfg.objective, cfg.max_len), ds.train_sequences()
    swaps = {"nn.Dropout": lambda m: m, "dtrec Dropout": use_fast_dropout}
    runs: dict[str, dict[str, list[float]]] = {k: {"dtrec": [], "sasrec": []} for k in swaps}
    for r in range(args.rounds):
        for name in list(swaps) if r % 2 == 0 else list(swaps)[::-1]:
            # the models call use_fast_dropout when built: swap it for the identity to get nn.Dropout
            fusion_module.use_fast_dropout = sasrec_module.use_fast_dropout = swaps[name]
            d = B.train_dtrec_steps(examples, feats, cfg, batch_size=args.batch_size, device="cpu")
            s = B.train_sasrec_steps(seqs, len(ds.catalog), batch_size=args.batch_size, device="cpu",
                                     **B.matched_sasrec(cfg))
            runs[name]["dtrec"].append(d["seconds_per_epoch"])
            runs[name]["sasrec"].append(s["seconds_per_epoch"])
            print(f"round {r} {name:13s}: dtrec {d['seconds_per_epoch']:.1f} s/epoch, same-size SASRec "
                  f"{s['seconds_per_epoch']:.2f} s/epoch", flush=True)
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in runs.items()}
    print(f"\nmedian s/epoch of {args.rounds} rounds, batch {args.batch_size}:")
    for k, m in med.items():
        print(f"  {k:13s} dtrec {m['dtrec']:.1f}  SASRec {m['sasrec']:.2f}  ratio {m['dtrec'] / m['sasrec']:.2f}x")
    a, b = med["nn.Dropout"], med["dtrec Dropout"]
    print(f"  speed-up: dtrec x{a['dtrec'] / b['dtrec']:.2f}, SASRec x{a['sasrec'] / b['sasrec']:.2f}")


if __name__ == "__main__":
    main()
