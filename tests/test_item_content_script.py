"""scripts/item_content.py: how much of the encoders' content an item tower keeps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from dtrec.config import ModelConfig
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.features import Features, cache_path
from dtrec.model.tower import DualTower
from synthetic import write_offline_catalog

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("item_content", ROOT / "scripts" / "item_content.py")
item_content = importlib.util.module_from_spec(spec)
spec.loader.exec_module(item_content)


def test_hit_at_10_counts_ties_against_the_target():
    scores = torch.zeros(2, 12)
    scores[0, 3] = 1.0  # row 0: the target alone on top
    assert item_content.hit_at_10(scores, torch.tensor([3, 3])) == 0.5  # row 1: tied with 11 others


def _features(n: int = 30, image: bool = True) -> Features:
    g = torch.Generator().manual_seed(0)
    present = {"text": torch.ones(n, dtype=torch.bool), "image": torch.full((n,), image)}
    return Features("synthetic", {"text": torch.randn(n, 8, generator=g), "image": torch.randn(n, 6, generator=g)},
                    present)


def _model(f: Features, **kw) -> DualTower:
    cfg = ModelConfig(encoder="synthetic", modality_dims=f.dims, d_model=16, n_heads=2, d_ff=32, n_layers=1,
                      max_len=4, tower="adaptor", n_experts=2, **kw)
    torch.manual_seed(0)
    return DualTower(cfg).eval()


def test_a_tower_whose_items_are_their_text_finds_every_item_from_its_text():
    f = _features(image=False)  # no item has an image: the full embedding is the text-only one
    out = item_content.item_content(_model(f), f)
    assert out["own_text_hit@10_item_tower"] == 1.0 and out["own_text_hit@10_raw_text"] == 1.0
    assert out["n_items"] == len(f) and -1.0 <= out["item_mean_pairwise_cosine"] <= 1.0


def test_an_image_the_text_knows_nothing_about_lowers_the_tower_hit(tmp_path):
    f = _features(n=60)
    model = _model(f)
    with torch.no_grad():  # make the image side dominate each item's embedding
        for e in model.item_adaptor.adaptor["image"].experts:
            e.weight.mul_(100.0)
    out = item_content.item_content(model, f)
    assert out["own_text_hit@10_item_tower"] < 0.5 < out["own_text_hit@10_raw_text"]
    # the command line on a prepared data set and a training run's folder
    catalog = Catalog([Item(id=str(i), title=f"t{i}", text="") for i in range(len(f))])
    ds = Dataset(catalog, Interactions(["u"], [[0, 1, 2]]), name="x", cold_items=[5, 6, 7])
    ds.save(tmp_path / "d")
    Features(f.encoder, f.values, f.present, ds.catalog.fingerprint()).save(cache_path(tmp_path / "d", "synthetic"))
    model.save_pretrained(tmp_path / "run" / "best")
    assert item_content.main(["--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "d"),
                              "--out", str(tmp_path / "o.json")]) == 0
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved["own_text_hit@10_item_tower"] == out["own_text_hit@10_item_tower"]
    assert saved["cold_items"] == 3 and saved["cold_own_text_hit@10_raw_text"] == 1.0
    assert saved["cold_own_text_hit@10_item_tower"] == item_content.item_content(model, f, [5, 6, 7])[
        "cold_own_text_hit@10_item_tower"]
    assert "item_content.py" in saved["provenance"]["command"]


def test_the_script_takes_the_shipped_model_by_name(tmp_path, monkeypatch):
    """`--checkpoint pretrained`, as the CLI takes it: the package's model, not a Hub repo id."""
    n = 12
    write_offline_catalog(tmp_path / "d", n=n, cold_items=[2, 3], seed=2)
    monkeypatch.chdir(tmp_path)  # no folder named `pretrained` here
    assert item_content.main(["--checkpoint", "pretrained", "--data", str(tmp_path / "d"),
                              "--out", str(tmp_path / "o.json")]) == 0
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved["n_items"] == n and saved["cold_items"] == 2
