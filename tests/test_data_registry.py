"""The readers' registry: a format added in one module is a `dtrec prepare` sub-command and a `prepare` kind."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from dtrec.cli import main
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.data.prepare import prepare
from dtrec.data.registry import (PrepareOptions, get_reader, register_reader,
                                 unregister_reader)


@dataclass(kw_only=True)
class ToyOptions(PrepareOptions):
    """A format of n items and one user who saw them all in order."""

    n: int = field(metadata={"help": "how many items"})
    label: str = "toy"
    kcore: int = 3


def _read_toy(options: ToyOptions, out: Path) -> Dataset:
    items = [Item(id=f"i{i}", title=f"{options.label} {i}", text=f"item {i}") for i in range(options.n)]
    inter = Interactions(["u"], [list(range(options.n))], None)
    return Dataset(Catalog(items, root=out), inter, name=options.label, info={"kcore": options.kcore}, root=out)


@pytest.fixture
def toy_reader():
    register_reader("toy", "a toy format (tests)", ToyOptions)(_read_toy)
    yield get_reader("toy")
    unregister_reader("toy")


def test_a_registered_reader_is_a_prepare_kind(toy_reader, tmp_path):
    ds = prepare("toy", tmp_path / "t", n=5, label="bricks")
    assert (len(ds.catalog), ds.name, ds.info["kcore"]) == (5, "bricks", 3)
    assert Dataset.load(tmp_path / "t").catalog[4].title == "bricks 4"
    again = prepare("toy", tmp_path / "t", ToyOptions(n=4, cold_fraction=0.0, seed=1))
    assert len(again.catalog) == 4 and again.info["seed"] == 1


def test_a_registered_reader_is_a_prepare_sub_command(toy_reader, tmp_path, capsys):
    assert main(["prepare", "toy", "--n", "4", "--out", str(tmp_path / "t"), "--seed", "7"]) == 0
    assert capsys.readouterr().out.startswith("prepared toy -> ")
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert (meta["seed"], meta["kcore"], meta["cold_fraction"]) == (7, 3, 0.0)
    with pytest.raises(SystemExit):
        main(["prepare", "toy", "--help"])
    shown = capsys.readouterr().out
    assert "--n N" in shown and "how many items" in shown and "--label LABEL" in shown
    assert shown.index("--label") < shown.index("--out") < shown.index("--kcore") < shown.index("--cold-fraction")
    assert "iterated k-core" in shown  # the common flags' help, though ToyOptions overrides kcore's default


def test_options_are_checked_by_name(toy_reader, tmp_path):
    with pytest.raises(ValueError, match="takes no option"):
        prepare("toy", tmp_path / "t", n=3, items="x.jsonl")
    with pytest.raises(ValueError, match="needs n"):
        prepare("toy", tmp_path / "t")
    with pytest.raises(ValueError, match="unknown source kind 'nope'; expected ") as e:
        prepare("nope", tmp_path / "t")
    assert str(e.value).endswith(" or toy") and all(k in str(e.value) for k in ("movielens", "unisrec", "jsonl"))


def test_the_built_in_readers_are_listed_in_help_order():
    # registration order is import order: `dtrec prepare` in a fresh process imports them through dtrec.data.prepare
    r = subprocess.run([sys.executable, "-m", "dtrec.cli", "prepare", "--help"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert r.returncode == 0 and "{movielens,unisrec,jsonl}" in r.stdout
    kcore = {k: next(f.default for f in fields(get_reader(k).options) if f.name == "kcore")
             for k in ("movielens", "unisrec", "jsonl")}
    assert kcore == {"movielens": 5, "unisrec": 0, "jsonl": 0}


def test_a_reader_is_registered_once(toy_reader):
    with pytest.raises(ValueError, match="registered twice"):
        register_reader("toy", "again", ToyOptions)(_read_toy)
