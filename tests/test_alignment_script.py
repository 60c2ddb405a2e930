"""scripts/alignment.py: cross-modal retrieval of held-out items through a checkpoint's item tower."""

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
spec = importlib.util.spec_from_file_location("alignment", ROOT / "scripts" / "alignment.py")
alignment = importlib.util.module_from_spec(spec)
spec.loader.exec_module(alignment)


def test_recall_counts_the_true_key_among_the_top_k():
    keys = torch.eye(4)
    assert alignment.recall_at(keys, keys, (1,)) == {"recall@1": 1.0}
    swapped = keys[[1, 0, 2, 3]]  # rows 0 and 1 now point at each other's key
    assert alignment.recall_at(swapped, keys, (1, 2)) == {"recall@1": 0.5, "recall@2": 1.0}


def test_the_script_scores_only_cold_items_with_both_modalities(tmp_path):
    n = 12
    g = torch.Generator().manual_seed(0)
    catalog = Catalog([Item(id=str(i), title=f"t{i}", text="") for i in range(n)])
    ds = Dataset(catalog, Interactions(["u"], [[0, 1, 2]]), name="x", cold_items=[3, 4, 5, 6])
    ds.save(tmp_path / "d")
    present = {"text": torch.ones(n, dtype=torch.bool), "image": torch.ones(n, dtype=torch.bool)}
    present["image"][6] = False  # a cold item without an image cannot take part
    f = Features("synthetic", {"text": torch.randn(n, 8, generator=g), "image": torch.randn(n, 6, generator=g)},
                 present, ds.catalog.fingerprint())
    f.save(cache_path(tmp_path / "d", "synthetic"))
    DualTower(ModelConfig(encoder="synthetic", modality_dims=f.dims, d_model=16, n_heads=2, d_ff=32,
                          tower="adaptor")).save_pretrained(tmp_path / "m")
    out = tmp_path / "a.json"
    assert alignment.main(["--checkpoint", str(tmp_path / "m"), "--data", str(tmp_path / "d"),
                           "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 3 and res["chance"]["recall@1"] == 1 / 3
    assert 0.0 <= res["text_to_image"]["recall@1"] <= res["text_to_image"]["recall@10"] == 1.0


def test_the_script_takes_the_shipped_model_by_name(tmp_path, monkeypatch):
    """`--checkpoint pretrained`, as the CLI takes it: the package's model, not a Hub repo id."""
    write_offline_catalog(tmp_path / "d", n=8, cold_items=[2, 3, 4], seed=1)
    monkeypatch.chdir(tmp_path)  # no folder named `pretrained` here
    out = tmp_path / "a.json"
    assert alignment.main(["--checkpoint", "pretrained", "--data", str(tmp_path / "d"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 3
