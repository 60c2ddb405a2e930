"""The shipped checkpoints (dtrec/weights): found as package data, the offline encoder's default init, zero-shot use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtrec.config import read_model_config
from dtrec.features import Features, cache_path
from dtrec.model.tower import DualTower
from dtrec.weights import SHIPPED, default_init, resolve_checkpoint, resolve_init, shipped_checkpoint
from synthetic import planted_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_the_pretrained_checkpoint_ships_with_the_package_and_reads_the_offline_features():
    folder = shipped_checkpoint("pretrained")
    assert folder.parent == ROOT / "dtrec" / "weights"
    cfg = read_model_config(folder)
    assert cfg.encoder == "offline" and cfg.tower == "adaptor"
    assert cfg.modality_dims == {"text": 384, "image": 1280}
    assert cfg.repeat_bias and cfg.content_lags == 3  # both score terms travel with it to zero-shot use and fine-tuning
    model = DualTower.from_pretrained(str(folder))
    assert sum(p.numel() for p in model.parameters()) > 0
    card = (folder / "README.md").read_text()
    assert "license: other" in card  # trained on MovieLens and Amazon reviews: their terms, not apache-2.0


def test_the_checkouts_assets_folder_is_the_shipped_checkpoint():
    assert (ROOT / "assets" / "models" / "pretrained").resolve() == shipped_checkpoint("pretrained").resolve()


def test_resolve_init_names_the_shipped_model_and_defaults_to_scratch():
    shipped = str(shipped_checkpoint("pretrained"))
    assert resolve_init("pretrained") == shipped
    assert resolve_init(None) is None
    assert resolve_init("none") is None and resolve_init("None") is None
    assert resolve_init("runs/mine") == "runs/mine"


def test_the_default_init_is_the_shipped_model_for_the_features_it_reads_only():
    shipped = str(shipped_checkpoint("pretrained"))
    dims = read_model_config(shipped).modality_dims
    assert default_init("offline", dict(dims)) == shipped
    assert default_init("offline", {"text": 384}) is None  # `--modalities text`: not the features it reads
    assert default_init("tiny-clip", dict(dims)) is None


def _cli(tmp_path: Path, *args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dtrec.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)


def test_cli_finetune_on_offline_features_starts_from_the_shipped_model_unless_told_otherwise(tmp_path):
    """Random features of the offline encoder's sizes: with no --init the run is the shipped model's (architecture
    and settings, a given flag winning); an architecture flag unlike it is one sentence naming `--init none`."""
    ds, f = planted_dataset(n_items=20, n_users=40, dims=dict(read_model_config(shipped_checkpoint("pretrained"))
                                                               .modality_dims))
    ds.save(tmp_path / "d")
    Features("offline", f.values, f.present, ds.catalog.fingerprint()).save(cache_path(tmp_path / "d", "offline"))
    small = ["--data", tmp_path / "d", "--encoder", "offline", "--epochs", 1, "--max-steps", 1, "--device", "cpu",
             "--no-amp", "--quiet"]

    r = _cli(tmp_path, "finetune", *small, "--out", tmp_path / "wide", "--d-model", 64)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--d-model 64 (the init: 128)" in r.stderr and "--init none" in r.stderr
    assert not (tmp_path / "wide").exists()

    r = _cli(tmp_path, "finetune", *small, "--out", tmp_path / "default", "--temperature", 0.1)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "default" / "train_config.json").read_text())
    base = read_model_config(shipped_checkpoint("pretrained"))
    assert Path(rec["init"]).resolve() == shipped_checkpoint("pretrained").resolve()
    model = rec["config"]["model"]
    assert (model["tower"], model["d_model"], model["content_lags"], model["repeat_bias"]) == (
        base.tower, base.d_model, base.content_lags, base.repeat_bias)
    assert model["temperature"] == 0.1 and model["dropout"] == base.dropout  # the given flag wins

    r = _cli(tmp_path, "finetune", *small, "--out", tmp_path / "scratch", "--init", "none", "--d-model", 64,
             "--n-heads", 2)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "scratch" / "train_config.json").read_text())
    assert rec["init"] is None and rec["config"]["model"]["d_model"] == 64


def test_an_unknown_shipped_name_is_one_clear_error():
    with pytest.raises(KeyError, match="shipped: " + ", ".join(SHIPPED)):
        shipped_checkpoint("nope")


@pytest.mark.slow
def test_cli_finetune_starts_from_the_pretrained_model_by_name_and_from_scratch_with_init_none(tmp_path):
    """Offline features of the small jsonl fixture, then two one-epoch fine-tunings and a zero-shot evaluation."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "dtrec.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=600, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    fx = ROOT / "tests" / "fixtures" / "jsonl"
    cli("prepare", "jsonl", "--items", fx / "items.jsonl", "--interactions", fx / "interactions.csv",
        "--out", tmp_path / "data")
    cli("extract", tmp_path / "data", "--encoder", "offline")
    small = ["--data", tmp_path / "data", "--encoder", "offline", "--epochs", 1, "--device", "cpu", "--no-amp"]
    r = cli("finetune", *small, "--init", "pretrained", "--out", tmp_path / "pre")
    assert "starting from" in r.stderr
    rec = json.loads((tmp_path / "pre" / "train_config.json").read_text())
    assert Path(rec["init"]).resolve() == shipped_checkpoint("pretrained").resolve()
    assert rec["config"]["model"]["tower"] == "adaptor" and rec["config"]["model"]["n_experts"] == 4
    assert rec["config"]["model"]["content_lags"] == 3  # inherited from the init, not given on the command line
    cli("finetune", *small, "--init", "none", "--out", tmp_path / "scratch")
    assert json.loads((tmp_path / "scratch" / "train_config.json").read_text())["init"] is None
    out = json.loads(cli("evaluate", "--checkpoint", "pretrained", "--data", tmp_path / "data",
                         "--json", "--quiet").stdout)
    assert 0.0 <= out["test"]["ndcg@10"] <= 1.0 and out["test"]["n"] > 0


def test_evaluate_takes_the_shipped_model_by_name(tmp_path):
    """`--checkpoint pretrained` with no such folder in the working directory means the shipped model: on a data set
    with only CLIP features the one-line refusal then speaks of the shipped model's encoder, not of a missing folder."""
    fx = ROOT / "tests" / "fixtures" / "unisrec"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "dtrec.cli"]
    r = subprocess.run([*run, "prepare", "unisrec", "--source", fx, "--name", "Tiny", "--out", tmp_path / "d"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*run, "evaluate", "--checkpoint", "pretrained", "--data", tmp_path / "d", "--json"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode != 0
    assert "offline" in r.stderr and "holds no" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_resolve_checkpoint_prefers_a_folder_of_that_name_over_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("pretrained") == str(shipped_checkpoint("pretrained"))
    assert resolve_checkpoint("runs/mine") == "runs/mine"
    (tmp_path / "pretrained").mkdir()
    assert resolve_checkpoint("pretrained") == "pretrained"
