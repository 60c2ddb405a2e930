"""Mean ± sample standard deviation over recipe runs of several seeds, as a Markdown table.

    python scripts/seed_table.py docs/results/movielens.json docs/results/movielens-seed1.json \
        docs/results/movielens-seed2.json [--split test|valid|cold_start]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtrec.eval import METRIC_KEYS, seed_summary
from dtrec.modelcard import METRIC_NAMES


def main(argv: list[str] | None = None) -> int:
    """Print the table of `seed_summary` for the given results files."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="results.json files written by scripts/*.sh")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    runs = [json.loads(Path(f).read_text()) for f in args.results]
    # the share of users whose last item ranks first, where the runs report it
    echo = any("last_item_first" in split for r in runs for m, v in r.items() if m != "meta"
               for split in v.values() if isinstance(split, dict))
    keys = list(METRIC_KEYS) + (["last_item_first"] if echo else [])
    names = {**METRIC_NAMES, "last_item_first": "last item first"}
    summary = seed_summary(runs, args.split, keys)
    print("| model (runs) | " + " | ".join(names[k] for k in keys) + " |")
    print("| --- |" + " ---: |" * len(keys))
    for model, stats in summary.items():
        n = max((s[2] for s in stats.values()), default=0)
        cells = [f"{stats[k][0]:.4f} ± {stats[k][1]:.4f}" if k in stats else "–" for k in keys]
        print(f"| {model} ({n}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
