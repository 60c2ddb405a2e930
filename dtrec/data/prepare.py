"""`dtrec prepare`: run a reader, apply the cold-start split, write the prepared data set."""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

from dtrec.data.catalog import Dataset
from dtrec.data.preprocess import cold_start_split


def check_out_dir(out: Path) -> None:
    """Refuse to write into a non-empty folder that is not a prepared data set (never clobber other files)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").exists():
        raise ValueError(f"--out {out} is not empty and holds no prepared data set; choose an empty or new folder")


def prepare(kind: str, out: str | Path, *, source: str | Path | None = None, posters: str | Path | None = None,
            name: str | None = None, items: str | Path | None = None, interactions: str | Path | None = None,
            kcore: int | None = None, cold_fraction: float = 0.0, seed: int = 42) -> Dataset:
    """Read one source kind ("movielens" | "unisrec" | "jsonl"), split off cold items, save to `out`."""
    out = Path(out)
    check_out_dir(out)
    if kind == "movielens":
        from dtrec.data.movielens import read_movielens

        ds = read_movielens(source, posters, out, kcore=5 if kcore is None else kcore)
    elif kind == "unisrec":
        from dtrec.data.unisrec import read_unisrec

        if kcore:
            raise ValueError("--kcore is not supported for the unisrec format: its splits are given and fixed")
        ds = read_unisrec(source, name, out)
    elif kind == "jsonl":
        from dtrec.data.jsonl import read_jsonl

        ds = read_jsonl(items, interactions, out, kcore=0 if kcore is None else kcore)
    else:
        raise ValueError(f"unknown source kind {kind!r}; expected movielens, unisrec or jsonl")
    ds.cold_items = cold_start_split(ds, cold_fraction, seed)
    ds.info.update({
        "seed": seed,
        "cold_fraction": cold_fraction,
        "cold_test_cases": len(ds.cold_cases("test")),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    ds.save(out)
    return ds


def summary(ds: Dataset, out: Path) -> str:
    """One line: counts, posters and cold items of a prepared data set."""
    c = ds.counts()
    line = (f"prepared {ds.name} -> {out}: {c['items']} items ({c['items_with_image']} with image), "
            f"{c['users']} users, {c['interactions']} interactions")
    if "posters" in ds.info:
        p = ds.info["posters"]
        line += f", posters matched {p['matched']}/{p['movies']}"
    if ds.cold_items:
        line += f", {len(ds.cold_items)} cold items ({ds.info['cold_test_cases']} cold test cases)"
    return line


def prepare_command(args: argparse.Namespace) -> int:
    """Handler of `dtrec prepare {movielens,unisrec,jsonl}`."""
    out = Path(args.out)
    ds = prepare(args.source_kind, out, source=getattr(args, "source", None), posters=getattr(args, "posters", None),
                 name=getattr(args, "name", None), items=getattr(args, "items", None),
                 interactions=getattr(args, "interactions", None), kcore=args.kcore,
                 cold_fraction=args.cold_fraction, seed=args.seed)
    print(summary(ds, out))
    return 0
