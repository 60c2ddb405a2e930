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

from dtrec.results import seed_table


def main(argv: list[str] | None = None) -> int:
    """Print the table of `dtrec.results.seed_table` for the given results files."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="results.json files written by scripts/*.sh")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    runs = [json.loads(Path(f).read_text()) for f in args.results]
    print("\n".join(seed_table(runs, args.split)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
