"""The baselines' registry: a kind registered in one place is a `dtrec baseline` kind and a `dtrec evaluate` model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dtrec.baselines import load_baseline, train_baseline
from dtrec.baselines.registry import Baseline, get_baseline, register_baseline, unregister_baseline
from dtrec.cli import main
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.eval import evaluate


def _train_last_first(dataset: Dataset, data_dir: Path, out: Path, options: dict, progress: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"model_type": "last-first", "num_items": len(dataset.catalog)}))
    return evaluate(_scores(len(dataset.catalog)), dataset.eval_cases("valid"))


def _scores(n: int):
    def scores(histories: list[list[int]]) -> torch.Tensor:
        out = torch.zeros(len(histories), n)
        for b, h in enumerate(histories):
            out[b, (h[-1] + 1) % n] = 1.0  # the item after the last one seen
        return out

    return scores


def _scorer(ckpt: Path, data_dir: Path, encoder: str | None, device: torch.device):
    return _scores(json.loads((ckpt / "config.json").read_text())["num_items"])


@pytest.fixture
def last_first():
    register_baseline(Baseline("last-first", _train_last_first, _scorer, flags=frozenset({"seed"}),
                               cold_note="a toy kind"))
    yield get_baseline("last-first")
    unregister_baseline("last-first")


@pytest.fixture
def data(tmp_path) -> Path:
    seqs = [[(u + i) % 10 for i in range(5)] for u in range(8)]  # each next item is the last one + 1
    Dataset(Catalog([Item(f"i{i}", f"item {i}", "") for i in range(10)]),
            Interactions([f"u{u}" for u in range(8)], seqs), name="cycle", cold_items=[]).save(tmp_path / "data")
    return tmp_path / "data"


def test_a_registered_baseline_trains_and_evaluates_from_the_command_line(last_first, data, tmp_path, capsys):
    assert main(["baseline", "last-first", "--data", str(data), "--out", str(tmp_path / "m"), "--lr", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["recall@10"] == 1.0  # --lr: not its flag, so not handed on
    assert json.loads((tmp_path / "m" / "valid.json").read_text())["mrr"] == 1.0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "m"), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["mrr"] == 1.0


def test_a_baseline_without_load_is_scored_not_loaded(last_first, data, tmp_path):
    train_baseline("last-first", data, tmp_path / "m")
    with pytest.raises(ValueError, match="built over features"):
        load_baseline(tmp_path / "m")


def test_an_unknown_model_type_names_its_file(data, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bpr"}))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "m"), "--data", str(data)]) == 2
    assert "names an unknown model_type 'bpr'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown baseline 'bpr'; choose one of popularity, sasrec, content-knn"):
        train_baseline("bpr", data, tmp_path / "x")


def test_a_kind_is_registered_once(last_first):
    with pytest.raises(ValueError, match="registered twice"):
        register_baseline(last_first)
