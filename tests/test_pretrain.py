"""Multi-domain sequence pretraining (dtrec/train/pretrain.py): domain batches, the shared feature
statistics, text-only sources, zero-shot transfer of a planted rule, resume, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import walk_dataset

from dtrec.config import ModelConfig, PretrainConfig
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.features import Features, content_vectors
from dtrec.model.tower import DualTower
from dtrec.train.batching import Collator
from dtrec.train.finetune import evaluate_model
from dtrec.train.pretrain import DomainBatches, pretrain

RULE_SEED = 1234  # one rule for every domain: that is what transfers


def rule_domain(name: str, seed: int, n_items: int = 48, n_users: int = 160, image: bool = False,
                cold: list[int] | None = None) -> tuple[Dataset, Features]:
    """A domain whose next item is the one whose text is nearest to a fixed linear map of the last item's text.

    Features are drawn afresh per domain; the map is the same for all, so a user tower that learned it on some
    domains finds successors in a domain it never saw, where the last item's own neighbours are no help."""
    g = torch.Generator().manual_seed(seed)
    rule = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(RULE_SEED)))[0]
    text = torch.nn.functional.normalize(torch.randn(n_items, 16, generator=g), dim=-1)
    sims = (text @ rule.T) @ text.T
    sims.fill_diagonal_(-2.0)
    nxt = sims.argmax(1)
    seqs = []
    for _ in range(n_users):
        s = [int(torch.randint(n_items, (1,), generator=g))]
        for _ in range(int(torch.randint(4, 9, (1,), generator=g)) - 1):
            s.append(int(nxt[s[-1]]))
        seqs.append(s)
    catalog = Catalog([Item(id=f"{name}{i}", title=f"{name} {i}", text="") for i in range(n_items)])
    ds = Dataset(catalog, Interactions([f"u{u}" for u in range(n_users)], seqs), name=name,
                 cold_items=list(cold or []))
    img = torch.randn(n_items, 12, generator=g) if image else torch.zeros(n_items, 12)
    present = {"text": torch.ones(n_items, dtype=torch.bool),
               "image": torch.full((n_items,), image, dtype=torch.bool)}
    return ds, Features("synthetic", {"text": text, "image": img}, present)


def tiny_pretrain_config(**kw) -> PretrainConfig:
    model = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, dropout=0.0, emb_dropout=0.0, max_len=8,
                        tower="adaptor", n_experts=2, adaptor_dropout=0.0, temperature=0.1)
    base = dict(model=model, epochs=6, batch_size=32, sequence_batch_size=32, lr=5e-3, weight_decay=0.0, amp=False,
                device="cpu", sequences=True, valid_users=0)
    base.update(kw)
    return PretrainConfig(**base)


def test_domain_batches_keep_sources_apart_and_cover_each_window_once_a_pass():
    examples = [[[0, 1], [2, 3, 4]] * 5, [[7, 8, 9]] * 7]
    db = DomainBatches(examples, 3, Collator("causal"), seed=0)
    db.set_epoch(0)
    seen = {0: 0, 1: 0}
    for source, batch in db:
        n = batch["items"].shape[0]
        seen[source] += n
        # every target of a batch is an item of its own source
        t = batch["targets"][batch["targets"] >= 0]
        assert set(t.tolist()) <= ({1, 3, 4} if source == 0 else {8, 9})
    assert seen == {0: 10, 1: 7}


def test_domain_batches_epochs_are_consecutive_slices_of_one_reproducible_stream():
    examples = [[[i, i + 1] for i in range(0, 20, 2)], [[i, i + 1] for i in range(100, 114, 2)]]

    def epoch_batches(steps, epoch):
        db = DomainBatches(examples, 2, Collator("causal"), steps=steps, seed=3)
        db.set_epoch(epoch)
        return [(s, b["items"][:, 0].tolist()) for s, b in db]

    full = epoch_batches(0, 0) + epoch_batches(0, 1)  # two passes of 9 batches
    assert len(full) == 18
    stream = epoch_batches(4, 0) + epoch_batches(4, 1) + epoch_batches(4, 2) + epoch_batches(4, 3)
    assert stream == full[:16]  # epochs of 4 steps cut the same stream, across the pass boundary
    assert epoch_batches(4, 2) == epoch_batches(4, 2)
    assert full[:9] != full[9:]  # a new pass is reshuffled


def test_norm_statistics_cover_every_source_and_ignore_absent_images_and_cold_items():
    a = rule_domain("a", 1, image=False, cold=[0, 1])
    b = rule_domain("b", 2, image=True)
    cfg = tiny_pretrain_config()
    model = DualTower(ModelConfig.from_dict({**cfg.model.__dict__, "encoder": "synthetic",
                                             "modality_dims": {"text": 16, "image": 12}}))
    model.fit_feature_norm_over([(a[1], a[0].cold_items), (b[1], [])])
    text = torch.cat([a[1].values["text"][2:], b[1].values["text"]])
    norm = model.item_adaptor.norm
    torch.testing.assert_close(norm["text"].mean, text.mean(0))
    torch.testing.assert_close(norm["text"].scale, text.std(0))
    # only b has images: a's zero placeholders do not pull the image statistics
    torch.testing.assert_close(norm["image"].mean, b[1].values["image"].mean(0))


def test_an_absent_image_placeholder_changes_nothing():
    ds, f = rule_domain("a", 1, image=False)
    cfg = tiny_pretrain_config()
    model = DualTower(ModelConfig.from_dict({**cfg.model.__dict__, "encoder": "synthetic",
                                             "modality_dims": {"text": 16, "image": 12}})).eval()
    garbage = Features("synthetic", {"text": f.values["text"], "image": torch.randn(len(f), 12) * 100},
                       f.present)
    torch.testing.assert_close(model.item_embeddings(f), model.item_embeddings(garbage))
    hist = [[0, 1, 2], [5]]
    torch.testing.assert_close(model.user_embeddings(hist, f), model.user_embeddings(hist, garbage))


@pytest.mark.slow
def test_pretraining_across_domains_transfers_a_planted_rule_zero_shot(tmp_path):
    sources = [rule_domain("a", 1, image=False), rule_domain("b", 2, image=True), rule_domain("c", 3)]
    held_out, held_feats = rule_domain("z", 9)
    cfg = tiny_pretrain_config(epochs=12)
    best = pretrain(sources, cfg, tmp_path, progress=False)
    assert best["best_epoch"] >= 0 and {"ndcg@10/a", "ndcg@10/b", "ndcg@10/c"} <= set(best)
    trained = DualTower.from_pretrained(str(tmp_path))
    torch.manual_seed(0)
    untrained = DualTower(trained.config)
    untrained.fit_feature_norm_over([(f, []) for _, f in sources])
    cases = held_out.eval_cases("test")
    zero_shot = evaluate_model(trained, held_feats, cases)["recall@10"]
    before = evaluate_model(untrained, held_feats, cases)["recall@10"]
    # the held-out domain's items and features were never seen; only the rule carries over
    assert zero_shot > 0.6, zero_shot
    assert zero_shot > before + 0.3, (zero_shot, before)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_sequence" in r and "valid_ndcg@10" in r for r in rows)
    assert rows[-1]["loss_sequence"] < rows[0]["loss_sequence"]


def test_item_pairs_choose_the_views_pretraining_contrasts(tmp_path):
    sources = [rule_domain("a", 1, image=True), rule_domain("b", 2)]
    pretrain(sources, tiny_pretrain_config(epochs=1, steps_per_epoch=2, item_pairs="t-vt,vt-vt"), tmp_path,
             progress=False)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {k for k in row if k.startswith("loss_") and k != "loss_sequence"} >= {"loss_t_vt", "loss_vt_vt"}
    assert "loss_v_t" not in row and "loss_t_t" not in row
    assert json.loads((tmp_path / "train_config.json").read_text())["config"]["item_pairs"] == "t-vt,vt-vt"
    with pytest.raises(ValueError, match="view pairs"):
        pretrain(sources, tiny_pretrain_config(epochs=1, item_pairs="t-x"), tmp_path / "bad", progress=False)


@pytest.mark.parametrize("geometry_weight", [0.0, 1.0])
def test_resumed_sequence_pretraining_matches_an_uninterrupted_run(tmp_path, geometry_weight):
    sources = [rule_domain("a", 1, image=False), rule_domain("b", 2, image=True)]
    cfg = tiny_pretrain_config(epochs=3, steps_per_epoch=4, batch_size=8, geometry_weight=geometry_weight)
    pretrain(sources, cfg, tmp_path / "full", progress=False)
    pretrain(sources, tiny_pretrain_config(epochs=2, steps_per_epoch=4, batch_size=8, geometry_weight=geometry_weight),
             tmp_path / "part", progress=False)
    pretrain(sources, cfg, tmp_path / "part", progress=False, resume=True)
    a = DualTower.from_pretrained(str(tmp_path / "full" / "last")).state_dict()
    b = DualTower.from_pretrained(str(tmp_path / "part" / "last")).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _neighbours_kept(model: DualTower, f: Features, k: int = 5) -> float:
    """Share of each item's k nearest neighbours by its frozen features kept by the model's item tower."""
    def nearest(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(x, dim=-1)
        return (x @ x.T).fill_diagonal_(-2.0).topk(k, dim=1).indices
    a, b = nearest(content_vectors(f.values, f.present)), nearest(model.item_embeddings(f))
    return float((a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().mean())


def test_neighbour_distillation_keeps_the_features_neighbourhoods_in_a_domain_never_seen(tmp_path):
    sources = [rule_domain("a", 1, image=True), rule_domain("b", 2), rule_domain("c", 3)]
    _, held = rule_domain("z", 9)
    kept = {}
    for w in (0.0, 2.0):
        out = tmp_path / f"w{w}"
        pretrain(sources, tiny_pretrain_config(epochs=6, geometry_weight=w), out, progress=False)
        kept[w] = _neighbours_kept(DualTower.from_pretrained(str(out)), held)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert ("loss_geometry" in rows[0]) == bool(w)
    assert rows[-1]["loss_geometry"] < rows[0]["loss_geometry"]
    assert kept[2.0] > kept[0.0] + 0.1, kept
    assert json.loads((tmp_path / "w2.0" / "train_config.json").read_text())["config"]["geometry_weight"] == 2.0


def test_the_content_term_learned_in_pretraining_serves_a_domain_never_seen(tmp_path):
    sources = [walk_dataset("a", 1, n_users=200, image=True), walk_dataset("b", 2, n_users=200), walk_dataset("c", 3, n_users=200)]
    held_out, held = walk_dataset("z", 9, n_users=200)
    cfg = tiny_pretrain_config(epochs=3, model=dataclasses.replace(tiny_pretrain_config().model, content_lags=2,
                                                                    repeat_bias=True))
    pretrain(sources, cfg, tmp_path, progress=False)
    model = DualTower.from_pretrained(str(tmp_path))
    assert model.content_bias.values()[0] > 0.5  # text-only and multimodal sources alike: follow the neighbour
    cases = held_out.eval_cases("test")
    zero_shot = evaluate_model(model, held, cases)["ndcg@10"]
    model.content_bias = None
    assert zero_shot > evaluate_model(model, held, cases)["ndcg@10"] + 0.2


def test_geometry_weight_is_a_non_negative_term_of_sequence_pretraining():
    with pytest.raises(ValueError, match="geometry_weight"):
        tiny_pretrain_config(geometry_weight=-1.0)
    with pytest.raises(ValueError, match="--sequences"):
        tiny_pretrain_config(geometry_weight=1.0, sequences=False)


def test_sequence_pretraining_refuses_bare_features(tmp_path):
    _, f = rule_domain("a", 1)
    with pytest.raises(ValueError, match="prepared data sets"):
        pretrain([(None, f)], tiny_pretrain_config(), tmp_path, progress=False)


def _save_domain(root: Path, name: str, seed: int, image: bool = False) -> None:
    from dtrec.features import cache_path

    ds, f = rule_domain(name, seed, image=image)
    ds.save(root)
    Features(f.encoder, f.values, f.present, ds.catalog.fingerprint()).save(cache_path(root, "synthetic"))


@pytest.mark.slow
def test_cli_pretrains_across_domains_resumes_and_evaluates_zero_shot(tmp_path):
    for name, seed, image in (("a", 1, False), ("b", 2, True), ("z", 9, False)):
        _save_domain(tmp_path / name, name, seed, image)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "dtrec.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=300, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r.stdout

    common = ["--data", tmp_path / "a", "--data", tmp_path / "b", "--encoder", "synthetic", "--out", tmp_path / "pre",
              "--sequences", "--tower", "adaptor", "--d-model", 32, "--n-heads", 2, "--d-ff", 64, "--n-layers", 1,
              "--max-len", 8, "--steps-per-epoch", 3, "--sequence-batch-size", 16, "--batch-size", 8,
              "--device", "cpu", "--no-amp", "--quiet"]
    cli("pretrain", *common, "--epochs", 1)
    cli("pretrain", "--out", tmp_path / "pre", "--epochs", 2, "--resume", "--quiet")  # sources from the run's record
    rows = [json.loads(line) for line in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    rec = json.loads((tmp_path / "pre" / "train_config.json").read_text())
    assert rec["config"]["sequences"] is True and set(rec["sources"]) == {"a", "b"}
    out = json.loads(cli("evaluate", "--checkpoint", tmp_path / "pre", "--data", tmp_path / "z", "--json", "--quiet"))
    assert out["test"]["n"] == 160 and 0.0 <= out["test"]["ndcg@10"] <= 1.0
