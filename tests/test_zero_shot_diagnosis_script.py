"""scripts/zero_shot_diagnosis.py: a checkpoint's ranking beside content kNN in its own and in the features' space."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch

from dtrec.baselines.knn import ContentKNN, ContentKNNConfig
from dtrec.eval import evaluate
from dtrec.features import cache_path
from dtrec.model import DualTower
from dtrec.scoring import evaluate_checkpoint
from synthetic import planted_dataset, tiny_model_config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("zero_shot_diagnosis", ROOT / "scripts" / "zero_shot_diagnosis.py")
diagnosis = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diagnosis)


def _angles(*degrees: float) -> torch.Tensor:
    r = torch.tensor(degrees) * math.pi / 180
    return torch.stack([r.cos(), r.sin()], dim=1)


def test_neighbour_overlap_counts_shared_nearest_neighbours():
    a = _angles(0, 10, 90, 100)  # nearest pairs: 0-1 and 2-3
    rows = torch.arange(4)
    assert diagnosis.neighbour_overlap(a, 3 * a, rows, k=1) == 1.0  # cosine ignores scale
    assert diagnosis.neighbour_overlap(a, _angles(0, 90, 10, 100), rows, k=1) == 0.0  # pairs 0-2 and 1-3 instead
    assert diagnosis.neighbour_overlap(a, _angles(0, 10, 90, 45), rows[:2], k=1) == 1.0  # rows 0, 1 keep theirs
    assert diagnosis.neighbour_overlap(a, _angles(0, 10, 90, 45), rows[2:], k=1) == 0.5  # 2 keeps 3; 3, now at 45°, finds 1


def test_the_script_scores_the_model_and_both_knns_as_the_library_does(tmp_path):
    ds, f = planted_dataset(n_items=30, n_users=60)
    ds.save(tmp_path / "d")
    f.fingerprint = ds.catalog.fingerprint()
    f.save(cache_path(tmp_path / "d", "synthetic"))
    model = DualTower(tiny_model_config(f, tower="adaptor"))
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "z.json"
    assert diagnosis.main(["--checkpoint", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    r = res["rankings"]
    assert res["n"] == 60 and set(r) == {"model", "knn_features", "knn_item_tower", "user_plus_last"}
    assert r["model"]["ndcg@10"] == evaluate_checkpoint(tmp_path / "m", tmp_path / "d")["test"]["ndcg@10"]
    knn = evaluate(ContentKNN(ContentKNNConfig("synthetic"), f).scores, ds.eval_cases("test"))
    assert r["knn_features"]["ndcg@10"] == knn["ndcg@10"]
    assert r["knn_features"]["last_item_first"] == r["knn_item_tower"]["last_item_first"] == 1.0
    assert 0.0 <= res["neighbour_overlap@10"] <= 1.0 and res["overlap_sample"] == 30


def test_the_untrained_control_is_seeded_and_ignores_the_weights(tmp_path):
    ds, f = planted_dataset(n_items=30, n_users=60)
    ds.save(tmp_path / "d")
    f.fingerprint = ds.catalog.fingerprint()
    f.save(cache_path(tmp_path / "d", "synthetic"))
    results = []
    for name, seed, untrained in (("a", 0, "5"), ("b", 1, "5"), ("c", 1, "6")):
        torch.manual_seed(seed)
        DualTower(tiny_model_config(f, tower="adaptor")).save_pretrained(tmp_path / name)
        out = tmp_path / f"{name}.json"
        assert diagnosis.main(["--checkpoint", str(tmp_path / name), "--data", str(tmp_path / "d"),
                               "--untrained", untrained, "--out", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["untrained_seed"] == 5
    assert results[0]["rankings"] == results[1]["rankings"]  # other weights, same seed: the same control
    assert results[1]["rankings"]["model"] != results[2]["rankings"]["model"]
