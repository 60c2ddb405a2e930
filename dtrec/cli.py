"""The `dtrec` command line: one sub-command per pipeline stage.

Each handler imports its library module lazily so that `dtrec --help` and
`dtrec info` start fast; handlers hold argument plumbing only, no logic.
"""

from __future__ import annotations

import argparse
import json
import sys


class CLIError(Exception):
    """An error reported to the user as one line, without a traceback."""


# --------------------------------------------------------------------------- prepare / info
def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="read a raw data set and write the prepared format")
    psub = p.add_subparsers(dest="source_kind", required=True)

    m = psub.add_parser("movielens", help="MovieLens-100K (u.data, u.item) with MovieLens-1M posters")
    m.add_argument("--source", required=True, help="folder holding u.data and u.item")
    m.add_argument("--posters", default=None, help="folder holding movies.dat and posters/<id>.jpg")
    _add_prep_flags(m)

    u = psub.add_parser("unisrec", help="UniSRec/MISSRec/DeCoRec format (*.inter, item2index, .text, feat*CLS)")
    u.add_argument("--source", required=True)
    u.add_argument("--name", required=True, help="file prefix, e.g. Scientific")
    _add_prep_flags(u, kcore_default=0)

    j = psub.add_parser("jsonl", help="your own catalog: items.jsonl + interactions.csv")
    j.add_argument("--items", required=True)
    j.add_argument("--interactions", required=True)
    _add_prep_flags(j)
    p.set_defaults(func=_cmd_prepare)

    i = sub.add_parser("info", help="counts of a prepared data set")
    i.add_argument("data", help="prepared data folder")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=_cmd_info)


def _add_prep_flags(p: argparse.ArgumentParser, kcore_default: int = 5) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--kcore", type=int, default=kcore_default, help="iterated k-core on users and items (0: off)")
    p.add_argument("--cold-fraction", type=float, default=0.0,
                   help="fraction of items held out of all training data for the cold-start split")
    p.add_argument("--seed", type=int, default=42)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from dtrec.data.prepare import prepare_command

    return prepare_command(args)


def _cmd_info(args: argparse.Namespace) -> int:
    from dtrec.data.catalog import Dataset

    counts = Dataset.load(args.data).counts()
    if args.json:
        print(json.dumps(counts))
    else:
        for k, v in counts.items():
            print(f"{k:>18}: {v}")
    return 0


# --------------------------------------------------------------------------- extract
def _add_extract_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="encode every item with a frozen encoder (cached per encoder)")
    p.add_argument("data", help="prepared data folder")
    p.add_argument("--encoder", default="offline", help="offline | clip:<model>[:<tag or file>] | tiny-clip")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="recompute even when the cache is valid")
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args: argparse.Namespace) -> int:
    from dtrec.features import extract_command

    return extract_command(args)


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="dtrec", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    _add_data_commands(sub)
    _add_extract_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from dtrec import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"dtrec {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
