"""Gather `dtrec evaluate --json` outputs of a recipe into one results.json (used by scripts/*.sh).

usage: python scripts/_results.py OUT/results.json --recipe NAME --data DIR --seed N
           --commands OUT/commands.txt NAME=EVAL.json [NAME=EVAL.json ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dtrec.provenance import git_commit, git_dirty  # noqa: E402


def _commit(repo: Path) -> str:
    """HEAD's hash, with '-dirty' when the working tree has uncommitted changes; 'unknown' outside git."""
    head = git_commit(repo)
    if head is None:
        return "unknown"
    return head + ("-dirty" if git_dirty(repo) else "")


def main(argv: list[str] | None = None) -> int:
    """Write the results file; every NAME=FILE must hold one evaluate JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--recipe", required=True)
    p.add_argument("--data", required=True, help="raw data folder the recipe read")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--commands", required=True, help="file with one executed command per line")
    p.add_argument("results", nargs="+", metavar="NAME=FILE")
    args = p.parse_args(argv)
    results: dict = {}
    for spec in args.results:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            p.error(f"expected NAME=FILE, got {spec!r}")
        results[name] = json.loads(Path(path).read_text())
    results["meta"] = {
        "recipe": args.recipe,
        "commit": _commit(REPO),
        "seed": args.seed,
        "data": str(Path(args.data).resolve()),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "commands": Path(args.commands).read_text().splitlines(),
    }
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, allow_nan=False))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
