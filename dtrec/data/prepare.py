"""`dtrec prepare`: run a registered reader (`dtrec.data.registry`), apply the cold-start split, write the data set."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dtrec.data.catalog import Dataset
from dtrec.data.preprocess import cold_start_split
from dtrec.data.registry import PrepareOptions, get_reader

# The built-in readers register themselves on import, in the order `dtrec prepare --help` lists them. Imported here,
# not by dtrec/data/__init__.py: unisrec imports dtrec.features, which imports dtrec.data.catalog (a cycle there).
from dtrec.data import movielens, unisrec, jsonl  # noqa: E402,F401  isort: skip


def check_out_dir(out: Path) -> None:
    """Refuse to write into a non-empty folder that is not a prepared data set (never clobber other files)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").exists():
        raise ValueError(f"--out {out} is not empty and holds no prepared data set; choose an empty or new folder")


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold a lock file beside `out` for the whole preparation: two `dtrec prepare` into one folder refuse."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no guard, as before
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.prepare.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another `dtrec prepare` is writing {out}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# What a preparation writes into its folder; the rest of an earlier folder (feature caches, files a
# user keeps there) moves into the new one.
_PREPARED = ("items.parquet", "sequences.parquet", "meta.json", "images", "unmatched_posters.txt")


def _replace_dir(staging: Path, out: Path) -> None:
    """Put the finished `staging` folder in place of `out`; what `out` holds beyond a preparation moves over.

    Feature caches move too: they check the catalog's fingerprint when read, so an unchanged catalog
    keeps its (minutes-long) extraction and a changed one recomputes. Files the new run wrote win.
    """
    if not out.is_dir():
        staging.rename(out)
        return
    for entry in out.iterdir():
        if entry.name in _PREPARED:
            continue
        target = staging / entry.name
        if entry.name == "features" and entry.is_dir():
            target.mkdir(exist_ok=True)
            for f in entry.iterdir():
                if not (target / f.name).exists():
                    shutil.move(str(f), target / f.name)
        elif not target.exists():
            shutil.move(str(entry), target)
    trash = out.parent / f".{out.name}.replaced-{os.getpid()}"
    out.rename(trash)
    try:
        staging.rename(out)
    except OSError:
        trash.rename(out)  # put the earlier data set back rather than leave no folder
        raise
    shutil.rmtree(trash, ignore_errors=True)


def prepare(kind: str, out: str | Path, options: PrepareOptions | None = None, **values: Any) -> Dataset:
    """Read one source kind (a registered reader: movielens, unisrec, jsonl, ...), split off cold items, save to `out`.

    `options` is the reader's options object, or else built from `values` (its field names: `source`, `posters`,
    `name`, `items`, `interactions`, `kcore`, `cold_fraction`, `seed`, ...; None: the reader's default).
    The data set is written to a staging folder beside `out` and takes `out`'s place only when
    complete: a failed run leaves an earlier preparation as it was, and a new one leaves no file of
    the old one behind (feature caches excepted: they are checked against the catalog on load).
    """
    reader = get_reader(kind)
    if options is None:
        options = reader.make_options(**values)
    elif values or not isinstance(options, reader.options):
        raise ValueError(f"prepare {kind!r} takes one {reader.options.__name__} and no other option")
    out = Path(out)
    check_out_dir(out)
    with _exclusive(out):
        staging = out.parent / f".{out.name}.prepare-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            ds = _prepare_into(reader.read, options, staging)
            _replace_dir(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    ds.root = ds.catalog.root = out  # image paths are relative to the data set's folder
    return ds


def _prepare_into(read: Callable[[Any, Path], Dataset], options: PrepareOptions, out: Path) -> Dataset:
    ds = read(options, out)
    ds.cold_items = cold_start_split(ds, options.cold_fraction, options.seed)
    ds.info.update({
        "seed": options.seed,
        "cold_fraction": options.cold_fraction,
        "cold_test_cases": len(ds.cold_cases("test")),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    ds.save(out)
    return ds


def summary(ds: Dataset, out: Path) -> str:
    """One line: counts, posters and cold items of a prepared data set."""
    c = ds.counts()
    line = (f"prepared {ds.name} -> {out}: {c['items']} items ({c['items_with_image']} with image), "
            + (f"{c['users']} users, {c['interactions']} interactions" if c["users"]
               else "no interactions (a catalog only: ready for extract and serve)"))
    if "posters" in ds.info:
        p = ds.info["posters"]
        line += f", posters matched {p['matched']}/{p['movies']}"
    if ds.cold_items:
        line += f", {len(ds.cold_items)} cold items ({ds.info['cold_test_cases']} cold test cases)"
    return line
