"""Checkpoint folders as score functions: every model type has a loader, `evaluate_checkpoint` finds `best/`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dtrec.baselines import list_baselines
from dtrec.cli import main
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.results import METRIC_KEYS
from dtrec.scoring import evaluate_checkpoint, load_scorer
from dtrec.train.adapt import adapt_checkpoint


def _tiny_dataset(path: Path) -> Dataset:
    rng = random.Random(1)
    seqs = [[rng.randrange(12) for _ in range(6)] for _ in range(20)]
    ds = Dataset(Catalog([Item(f"i{i}", f"item {i}", "") for i in range(12)]),
                 Interactions([f"u{u}" for u in range(20)], seqs), name="tiny")
    ds.save(path)
    return ds


def test_every_registered_baseline_trains_and_scores():
    assert [b.name for b in list_baselines()][:3] == ["popularity", "sasrec", "content-knn"]
    assert all(callable(b.train) and callable(b.scorer) for b in list_baselines())
    assert {b.name for b in list_baselines() if b.cold_note} >= {"popularity", "sasrec"}


def test_evaluate_checkpoint_accepts_a_training_folder_with_best(tmp_path):
    _tiny_dataset(tmp_path / "data")
    main(["baseline", "popularity", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run" / "best")])
    res = evaluate_checkpoint(tmp_path / "run", tmp_path / "data")
    assert res["valid"]["n"] == 20
    kind, score = load_scorer(tmp_path / "run", tmp_path / "data", device="cpu")
    assert kind == "popularity" and tuple(score([[0, 1]]).shape) == (1, 12)


def test_a_folder_without_a_checkpoint_says_so(tmp_path):
    _tiny_dataset(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_scorer(tmp_path / "data", tmp_path / "data")


@pytest.mark.slow
@pytest.mark.parametrize("shipped, results, row_name", [
    ("scientific", "scientific-repeat-seed42.json", "dtrec-adaptor"),
    ("scientific-text", "scientific-text-repeat-seed42.json", "dtrec-adaptor-text"),
])
def test_shipped_scientific_checkpoint_reproduces_its_published_row(tmp_path, shared_data, shipped, results, row_name):
    """assets/models/<shipped> + `dtrec evaluate` give the seed-42 row of docs/results exactly."""
    repo = Path(__file__).resolve().parent.parent
    if not (shared_data / "amazon-scientific" / "Scientific.item2index").exists():
        pytest.skip(f"Amazon Scientific data not found under {shared_data}")
    assert main(["prepare", "unisrec", "--source", str(shared_data / "amazon-scientific"), "--name", "Scientific",
                 "--out", str(tmp_path / "sci")]) == 0
    published = json.loads((repo / "docs" / "results" / results).read_text())
    row = published[row_name]["test"]
    got = evaluate_checkpoint(repo / "assets" / "models" / shipped, tmp_path / "sci", device="cpu",
                              ties=row["ties"])  # the rule the published row states
    for key in METRIC_KEYS:
        assert got["test"][key] == pytest.approx(row[key], abs=1e-6)




@pytest.fixture(scope="module")
def fresh_movielens1m(tmp_path_factory, shared_data) -> Path:
    """MovieLens-1M prepared and extracted afresh, as prepare_domains.sh does (once for this module's tests)."""
    source = shared_data / "movielens-1m"
    if not (source / "items.jsonl.gz").exists():
        pytest.skip(f"MovieLens-1M not found under {shared_data}")
    data = tmp_path_factory.mktemp("ml1m") / "movielens-1m"
    assert main(["prepare", "jsonl", "--items", str(source / "items.jsonl.gz"), "--interactions",
                 str(source / "interactions.csv.gz"), "--out", str(data), "--cold-fraction", "0.1",
                 "--seed", "42"]) == 0
    assert main(["extract", str(data), "--encoder", "offline"]) == 0
    return data


@pytest.mark.slow
@pytest.mark.parametrize("shipped, results", [("movielens1m-item-ids", "movielens1m-item-ids-seed42.json"),
                                              ("movielens1m-batch128", "movielens1m-batch128-dropout02-seed42.json"),
                                              ("movielens1m-batch128-20epochs",
                                               "movielens1m-batch128-dropout02-20epochs-seed42.json")])
def test_shipped_movielens1m_checkpoint_reproduces_its_row_on_freshly_extracted_features(fresh_movielens1m, shipped,
                                                                                        results):
    """A MovieLens-1M checkpoint of docs/results.md on the data prepared and extracted afresh: `dtrec evaluate`
    gives its published test row (the item-ID one's IDs recognise the catalog)."""
    repo = Path(__file__).resolve().parent.parent
    row = json.loads((repo / "docs" / "results" / results).read_text())["test"]
    got = evaluate_checkpoint(repo / "assets" / "models" / shipped, fresh_movielens1m, device="cpu")
    for key in ("ndcg@10", "recall@10", "recall@50", "mrr"):
        assert got["test"][key] == pytest.approx(row[key], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("scale, row_name", [(None, "dtrec-zero-shot"), (4.0, "dtrec-zero-shot-scaled")])
def test_the_checkpoint_pretrained_without_movielens1m_reproduces_its_zero_shot_rows(tmp_path, fresh_movielens1m,
                                                                                    scale, row_name):
    """assets/models/pretrained-without-ml1m-content on MovieLens-1M, as published and with its content term x4
    (`dtrec adapt --content-scale 4 --keep-norm`): the zero-shot rows of docs/pretraining.md, test and cold."""
    repo = Path(__file__).resolve().parent.parent
    folder = repo / "assets" / "models" / "pretrained-without-ml1m-content"
    if scale is not None:
        adapt_checkpoint(folder, fresh_movielens1m, tmp_path / "scaled", refit_norm=False, content_scale=scale)
        folder = tmp_path / "scaled"
    row = json.loads((repo / "docs" / "results" / "transfer-ml1m-content-scale4-seed42.json").read_text())[row_name]
    got = evaluate_checkpoint(folder, fresh_movielens1m, device="cpu")
    for split in ("test", "cold_start"):
        for key in ("ndcg@10", "recall@10", "recall@50", "mrr"):
            assert got[split][key] == pytest.approx(row[split][key], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint, record, scale", [
    ("pretrained-content", "transfer-toy-content3-50steps-seed42.json", None),
    ("pretrained", "transfer-toy-content3-geometry1-50steps-seed42.json", None),  # the shipped model
    ("pretrained", "transfer-toy-content-scale3-seed42.json", 3.0),  # the same, `dtrec adapt --content-scale 3`
])
def test_content_term_checkpoint_reproduces_its_zero_shot_row_on_a_domain_never_seen(tmp_path, shared_data,
                                                                                     checkpoint, record, scale):
    """A content-term checkpoint on Amazon 2014 Toys prepared and extracted afresh (as prepare_domains.sh does):
    `dtrec evaluate` gives the zero-shot row of docs/pretraining.md's content-term table (with its content term
    scaled as `dtrec adapt --content-scale --keep-norm` does, the scaled row)."""
    repo = Path(__file__).resolve().parent.parent
    source = shared_data / "seqrec-text" / "amazon2014-toy"
    if not (source / "items.jsonl.gz").exists():
        pytest.skip(f"Amazon 2014 Toys not found under {shared_data}")
    data = tmp_path / "toy"
    assert main(["prepare", "jsonl", "--items", str(source / "items.jsonl.gz"), "--interactions",
                 str(source / "interactions.csv.gz"), "--out", str(data)]) == 0
    assert main(["extract", str(data), "--encoder", "offline"]) == 0
    folder = repo / "assets" / "models" / checkpoint
    if scale is not None:
        adapt_checkpoint(folder, data, tmp_path / "scaled", refit_norm=False, content_scale=scale)
        folder = tmp_path / "scaled"
    name = "dtrec-zero-shot" if scale is None else "dtrec-zero-shot-scaled"
    row = json.loads((repo / "docs" / "results" / record).read_text())[name]["test"]
    got = evaluate_checkpoint(folder, data, device="cpu")
    for key in ("ndcg@10", "recall@10", "recall@50", "mrr"):
        assert got["test"][key] == pytest.approx(row[key], abs=1e-6)
