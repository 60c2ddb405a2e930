"""Zero-shot adaptation to a new catalog (dtrec/train/adapt.py, `dtrec adapt`): the standardisation is
refitted on the new catalog's warm items, every learned weight is kept, and the result is a checkpoint
that evaluates like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dtrec.cli import main
from dtrec.config import ModelConfig
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.features import Features, cache_path
from dtrec.model.tower import DualTower
from dtrec.train.adapt import ADAPT_RECORD, adapt_checkpoint


def _domain(root: Path, seed: int, shift: float, cold: list[int] | None = None, n_items: int = 30) -> Features:
    """A prepared folder whose text features sit around `shift` with spread 3, and its cached features."""
    g = torch.Generator().manual_seed(seed)
    text = shift + 3.0 * torch.randn(n_items, 8, generator=g)
    seqs = [[int(i) for i in torch.randint(n_items, (5,), generator=g)] for _ in range(40)]
    catalog = Catalog([Item(id=f"i{i}", title=f"item {i}", text="") for i in range(n_items)])
    ds = Dataset(catalog, Interactions([f"u{u}" for u in range(len(seqs))], seqs), name=root.name,
                 cold_items=list(cold or []))
    ds.save(root)
    f = Features("synthetic", {"text": text}, {"text": torch.ones(n_items, dtype=torch.bool)},
                 ds.catalog.fingerprint())
    f.save(cache_path(root, "synthetic"))
    return f


def _checkpoint(out: Path, features: Features, tower: str = "adaptor") -> DualTower:
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=8, tower=tower, n_experts=2,
                      encoder="synthetic", modality_dims=features.dims)
    torch.manual_seed(0)
    model = DualTower(cfg)
    model.fit_feature_norm(features)
    model.save_pretrained(out)
    return model


def test_adapt_refits_the_standardisation_on_warm_items_and_keeps_every_weight(tmp_path):
    source = _checkpoint(tmp_path / "ckpt", _domain(tmp_path / "a", 1, shift=0.0))
    cold = [0, 1, 2]
    target = _domain(tmp_path / "b", 2, shift=5.0, cold=cold)
    target.values["text"][cold] = 1000.0  # cold items are left out: these rows must not move the statistics
    target.save(cache_path(tmp_path / "b", "synthetic"))

    record = adapt_checkpoint(tmp_path / "ckpt", tmp_path / "b", tmp_path / "adapted")

    assert record["items_fitted"] == {"text": 27} and record["cold_items_left_out"] == 3
    assert json.loads((tmp_path / "adapted" / ADAPT_RECORD).read_text())["adapted_from"] == str(tmp_path / "ckpt")
    adapted = DualTower.from_pretrained(str(tmp_path / "adapted"))
    warm = target.values["text"][3:]
    z = adapted.item_adaptor.standardise({"text": warm})["text"]
    assert torch.allclose(z.mean(0), torch.zeros(8), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(8), atol=1e-4)
    # Only the statistics changed; every learned weight is the source's.
    before, after = load_file(str(tmp_path / "ckpt" / "model.safetensors")), \
        load_file(str(tmp_path / "adapted" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith((".mean", ".scale")) for k in changed)
    assert not torch.equal(source.item_embeddings(target), adapted.item_embeddings(target))


def test_adapt_refuses_a_tower_without_statistics(tmp_path):
    f = _domain(tmp_path / "a", 1, shift=0.0)
    _checkpoint(tmp_path / "ckpt", f, tower="fusion")
    with pytest.raises(ValueError, match="only adaptor checkpoints"):
        adapt_checkpoint(tmp_path / "ckpt", tmp_path / "a", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_adapts_then_evaluates_the_adapted_checkpoint(tmp_path, capsys):
    _checkpoint(tmp_path / "ckpt", _domain(tmp_path / "a", 1, shift=0.0))
    _domain(tmp_path / "b", 2, shift=5.0)
    assert main(["adapt", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(tmp_path / "b"),
                 "--out", str(tmp_path / "adapted")]) == 0
    assert "30 with text" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(tmp_path / "adapted"), "--data", str(tmp_path / "b"),
                 "--json", "--quiet", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test"]["n"] == 40 and 0.0 <= res["test"]["ndcg@10"] <= 1.0


def _content_checkpoint(out: Path, features: Features) -> DualTower:
    """An adaptor checkpoint with a two-place content term whose weights are not zero."""
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=8, tower="adaptor", n_experts=2,
                      encoder="synthetic", modality_dims=features.dims, content_lags=2)
    torch.manual_seed(0)
    model = DualTower(cfg)
    model.fit_feature_norm(features)
    with torch.no_grad():
        model.content_bias.weight.copy_(torch.tensor([0.03, 0.01]))
    model.save_pretrained(out)
    return model


def test_content_scale_multiplies_only_the_content_weights_and_so_their_share_of_the_score(tmp_path):
    source = _content_checkpoint(tmp_path / "ckpt", _domain(tmp_path / "a", 1, shift=0.0))
    target = _domain(tmp_path / "b", 2, shift=5.0)

    record = adapt_checkpoint(tmp_path / "ckpt", tmp_path / "b", tmp_path / "adapted", refit_norm=False,
                              content_scale=3.0)

    assert record["norm_refitted"] is False and record["items_fitted"] == {}
    assert record["content_weights"] == {"before": [0.3, 0.1], "after": [0.9, 0.3]}
    before, after = load_file(str(tmp_path / "ckpt" / "model.safetensors")), \
        load_file(str(tmp_path / "adapted" / "model.safetensors"))
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"content_bias.weight"}
    adapted = DualTower.from_pretrained(str(tmp_path / "adapted")).eval()
    source.eval()
    histories = [[1, 2, 3], [4, 5], [6]]
    with torch.no_grad():
        s0 = source.scores(histories, target, source.item_embeddings(target), source.content_vectors(target))
        s3 = adapted.scores(histories, target, adapted.item_embeddings(target), adapted.content_vectors(target))
        offsets = source.content_offsets(histories, target)
    assert offsets.abs().max() > 0
    assert torch.allclose(s3 - s0, 2 * offsets, atol=1e-5)  # x3: two more shares of the term, nothing else


def test_content_scale_with_a_refit_does_both(tmp_path):
    _content_checkpoint(tmp_path / "ckpt", _domain(tmp_path / "a", 1, shift=0.0))
    _domain(tmp_path / "b", 2, shift=5.0)
    record = adapt_checkpoint(tmp_path / "ckpt", tmp_path / "b", tmp_path / "adapted", content_scale=0.5)
    assert record["norm_refitted"] and record["items_fitted"] == {"text": 30}
    assert record["content_weights"]["after"] == [0.15, 0.05]


@pytest.mark.parametrize("kwargs, match", [
    (dict(refit_norm=False), "nothing to adapt"),
    (dict(content_scale=0.0), "positive number"),
    (dict(content_scale=float("nan")), "positive number"),
])
def test_adapt_refuses_what_would_change_nothing_or_break_the_term(tmp_path, kwargs, match):
    _content_checkpoint(tmp_path / "ckpt", _domain(tmp_path / "a", 1, shift=0.0))
    with pytest.raises(ValueError, match=match):
        adapt_checkpoint(tmp_path / "ckpt", tmp_path / "a", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_scales_the_content_term_and_refuses_a_checkpoint_without_one(tmp_path, capsys):
    _content_checkpoint(tmp_path / "with", _domain(tmp_path / "a", 1, shift=0.0))
    _checkpoint(tmp_path / "without", _domain(tmp_path / "a", 1, shift=0.0))
    assert main(["adapt", "--checkpoint", str(tmp_path / "with"), "--data", str(tmp_path / "a"),
                 "--content-scale", "2", "--keep-norm", "--out", str(tmp_path / "x2")]) == 0
    out = capsys.readouterr().out
    assert "content term x2 (weights 0.600, 0.200)" in out and "standardisation" not in out
    assert main(["adapt", "--checkpoint", str(tmp_path / "without"), "--data", str(tmp_path / "a"),
                 "--content-scale", "2", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "has no content term" in err and "Traceback" not in err and not (tmp_path / "y").exists()
