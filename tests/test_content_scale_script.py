"""scripts/content_scale.py: zero-shot validation metrics of a checkpoint for each content-term scale, and the best."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dtrec.baselines.knn import ContentKNN, ContentKNNConfig
from dtrec.eval import evaluate
from dtrec.features import cache_path
from dtrec.model import DualTower
from dtrec.scoring import evaluate_checkpoint
from dtrec.train.adapt import adapt_checkpoint
from synthetic import planted_dataset, tiny_model_config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("content_scale", ROOT / "scripts" / "content_scale.py")
content_scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(content_scale)


def _setup(tmp_path: Path, content_lags: int = 2):
    ds, f = planted_dataset(n_items=30, n_users=60)
    ds.save(tmp_path / "d")
    f.fingerprint = ds.catalog.fingerprint()
    f.save(cache_path(tmp_path / "d", "synthetic"))
    torch.manual_seed(0)
    model = DualTower(tiny_model_config(f, tower="adaptor", content_lags=content_lags))
    if content_lags:
        with torch.no_grad():
            model.content_bias.weight.copy_(torch.linspace(0.02, 0.01, content_lags))
    model.save_pretrained(tmp_path / "m")
    return ds, f


def test_every_setting_is_scored_as_the_adapted_checkpoint_would_be_and_the_best_is_named(tmp_path, capsys):
    ds, f = _setup(tmp_path)
    out = tmp_path / "s.json"
    assert content_scale.main(["--checkpoint", str(tmp_path / "m"), "--data", str(tmp_path / "d"),
                               "--scales", "1,4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {(r["refit_norm"], r["content_scale"]): r for r in res["rows"]}
    assert set(rows) == {(False, 1.0), (False, 4.0), (True, 1.0), (True, 4.0)} and res["split"] == "valid"
    assert rows[False, 4.0]["ndcg@10"] != rows[False, 1.0]["ndcg@10"]  # the scale reaches the ranking
    assert rows[False, 4.0]["content_weights"] == pytest.approx([4 * w for w in rows[False, 1.0]["content_weights"]])
    # A row is what `dtrec adapt` with that setting then `dtrec evaluate` give.
    adapt_checkpoint(tmp_path / "m", tmp_path / "d", tmp_path / "a", refit_norm=True, content_scale=4.0)
    assert rows[True, 4.0]["ndcg@10"] == pytest.approx(evaluate_checkpoint(tmp_path / "a", tmp_path / "d")["valid"]["ndcg@10"])
    assert rows[False, 1.0]["ndcg@10"] == pytest.approx(evaluate_checkpoint(tmp_path / "m", tmp_path / "d")["valid"]["ndcg@10"])
    knn = evaluate(ContentKNN(ContentKNNConfig("synthetic"), f).scores, ds.eval_cases("valid"))
    assert res["content_knn"]["ndcg@10"] == pytest.approx(knn["ndcg@10"])
    best = max(res["rows"], key=lambda r: r["ndcg@10"])
    assert res["choice"] == {"content_scale": best["content_scale"], "keep_norm": not best["refit_norm"],
                             "by": "valid ndcg@10"}
    assert f"--content-scale {best['content_scale']:g}" in capsys.readouterr().out


def test_a_checkpoint_without_the_term_or_bad_scales_get_one_sentence(tmp_path, capsys):
    _setup(tmp_path, content_lags=0)
    assert content_scale.main(["--checkpoint", str(tmp_path / "m"), "--data", str(tmp_path / "d")]) == 2
    assert "has no content term" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        content_scale.main(["--checkpoint", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--scales", "1,x"])
    assert "comma-separated numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        content_scale.main(["--checkpoint", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--scales", "1,0"])
    assert "positive factors" in capsys.readouterr().err
