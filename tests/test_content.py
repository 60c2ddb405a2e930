"""The content term (dtrec/model/content.py): the batched offsets and the inference query against the plain
definition, training's offsets at a window's last position are serving's, the model with it at zero is the
model without it, a planted content signal is learned, checkpoints carry it, and serving ranks with it."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import (open_demo, padded_batch, png_bytes, planted_dataset, tiny_finetune_config, tiny_model_config,
                       walk_dataset)

from dtrec.config import ModelConfig
from dtrec.features import Features
from dtrec.model import DualTower
from dtrec.model.content import ContentBias, content_offsets, content_offsets_reference, content_scores
from dtrec.train.checkpoint import init_from
from dtrec.train.finetune import FinetuneObjective, evaluate_model, finetune


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_batched_offsets_and_the_served_ones_match_the_plain_definition_at_every_position():
    weight = torch.tensor([0.7, -0.4, 0.25])
    content = _unit(6, 5, 0)
    # repeats inside a history, histories longer than the weights, one of a single item
    histories = [[3, 1, 3, 3, 0, 2, 3], [4], [2, 2, 1]]
    items, padding = padded_batch(histories)
    every = content_offsets(weight, items, padding, content, torch.arange(6))
    assert every.shape == (3, 7, 6)
    for b, h in enumerate(histories):
        for t in range(len(h)):
            expect = content_offsets_reference(weight.tolist(), [h[: t + 1]], content.tolist())[0]
            torch.testing.assert_close(every[b, t], torch.tensor(expect), rtol=0, atol=1e-5)
    # an item's own place gives it nothing: that is the repeat term's
    assert every[1, 0, 4] == 0 and every[2, 1, 2] == 0 and every[2, 1, 1] != 0
    # serving: whole histories, only their last len(weight) items count
    torch.testing.assert_close(content_scores(weight, histories, content),
                               torch.tensor(content_offsets_reference(weight.tolist(), histories, content.tolist())),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(content_scores(weight, [[5, 0, 1, 2]], content)[:, 3:],
                               (content_scores(weight, [[1, 2]], content) + weight[2] * content[0] @ content.T)[:, 3:])
    assert (content_scores(weight, [[]], content) == 0).all()
    # any candidate list, duplicates included, picks the same columns
    cand = torch.tensor([3, 3, 0, 5])
    torch.testing.assert_close(content_offsets(weight, items, padding, content, cand), every[:, :, cand])
    # padding neither gives nor asks, left- or right-padded
    left = torch.stack([torch.roll(items[b], int(padding[b].sum())) for b in range(3)])
    lpad = torch.stack([torch.roll(padding[b], int(padding[b].sum())) for b in range(3)])
    shifted = content_offsets(weight, left, lpad, content, torch.arange(6))
    for b, h in enumerate(histories):
        start = int(lpad[b].sum())
        torch.testing.assert_close(shifted[b, start:], every[b, : len(h)], rtol=0, atol=1e-6)


def test_the_term_needs_a_place_and_the_causal_read_out():
    with pytest.raises(ValueError, match="at least one history place"):
        ContentBias(0)
    with pytest.raises(ValueError, match="content_lags"):
        ModelConfig(modality_dims={"text": 8}, d_model=16, n_heads=2, objective="cloze", content_lags=2)


def _features_and_config(**kw):
    ds, f = planted_dataset(n_items=12, n_users=4)
    return f, tiny_model_config(f, tower="adaptor", n_heads=2, n_experts=2, max_len=6, **kw)


def test_at_zero_the_model_scores_as_without_it_and_its_offsets_are_the_features_cosines():
    f, cfg = _features_and_config(repeat_bias=True)
    torch.manual_seed(0)
    plain = DualTower(cfg).eval()
    torch.manual_seed(0)
    model = DualTower(dataclasses.replace(cfg, content_lags=2)).eval()
    histories = [[0, 3, 5], [7], [1, 1, 1, 1, 1, 1, 1, 9]]
    items = plain.item_embeddings(f)
    assert plain.content_offsets(histories, f) is None
    torch.testing.assert_close(model.scores(histories, f, items), plain.scores(histories, f, items))
    with torch.no_grad():
        model.content_bias.weight.copy_(torch.tensor([0.2, -0.05]))  # offsets 2 and -0.5 (scale 10)
    raw = model.content_vectors(f)
    cos = (raw @ raw.T).fill_diagonal_(0)  # an item's own cosine is left to the repeat term
    expect = plain.scores(histories, f, items) + torch.stack([2 * cos[h[-1]] - 0.5 * cos[h[-2]] if len(h) > 1
                                                              else 2 * cos[h[-1]] for h in histories])
    torch.testing.assert_close(model.scores(histories, f, items), expect)
    torch.testing.assert_close(model.scores(histories, f, items, content=raw), expect)


def test_content_vectors_leave_out_a_modality_no_item_has_without_changing_a_cosine():
    f, cfg = _features_and_config()
    model = DualTower(cfg)
    text_only = Features(f.encoder, dict(f.values), {**f.present, "image": torch.zeros(len(f), dtype=torch.bool)})
    narrow = model.content_vectors(text_only)
    assert narrow.shape == (len(f), f.dims["text"])
    full = F.normalize(torch.cat([F.normalize(f.values["text"], dim=-1), torch.zeros(len(f), f.dims["image"])], -1),
                       dim=-1)
    torch.testing.assert_close(narrow @ narrow.T, full @ full.T)


def test_training_offsets_at_a_windows_last_position_are_the_served_ones():
    f, cfg = _features_and_config(content_lags=3)
    model = DualTower(cfg)
    with torch.no_grad():
        model.content_bias.weight.copy_(torch.tensor([0.1, 0.03, -0.02]))
    objective = FinetuneObjective(model, f)
    histories = [[0, 3, 5, 2], [7, 1]]
    items, padding = padded_batch(histories)
    train = objective.content_offsets(items, padding, torch.arange(len(f)))
    served = model.content_offsets(histories, f)
    for b, h in enumerate(histories):
        torch.testing.assert_close(train[b, len(h) - 1], served[b], rtol=0, atol=1e-5)
    # sampled candidates pick the same columns
    cand = torch.tensor([4, 4, 0, 11])
    torch.testing.assert_close(objective.content_offsets(items, padding, cand), train[:, :, cand])


def test_training_learns_a_planted_content_signal_that_carries_to_unseen_features(tmp_path):
    ds, f = walk_dataset()
    cfg = tiny_finetune_config(f, model={"content_lags": 2, "repeat_bias": True, "tower": "adaptor", "n_heads": 2,
                                         "n_experts": 2}, epochs=6, evaluate_test=False)
    finetune(ds, f, cfg, tmp_path, progress=False)
    model = DualTower.from_pretrained(str(tmp_path / "last"))
    w = model.content_bias.values().detach()
    assert w[0] > 0.5  # the last item's neighbour is the next item: the term learns to follow it
    # another catalog of the same kind, never trained on: the learned term alone already ranks well
    ds2, f2 = walk_dataset(seed=1)
    cases = list(ds2.eval_cases("test"))
    with_term = evaluate_model(model, f2, cases)["ndcg@10"]
    model.content_bias = None
    without = evaluate_model(model, f2, cases)["ndcg@10"]
    assert with_term > without + 0.2


def test_init_from_starts_the_term_at_zero_keeps_a_matching_one_and_drops_it_when_off(tmp_path):
    f, cfg = _features_and_config()
    DualTower(cfg).save_pretrained(tmp_path / "plain")
    model = DualTower(dataclasses.replace(cfg, content_lags=2))
    assert "content term initialised at zero" in init_from(model, tmp_path / "plain")
    assert (model.content_bias.weight == 0).all()
    with torch.no_grad():
        model.content_bias.weight.copy_(torch.tensor([0.4, -0.1]))
    model.save_pretrained(tmp_path / "content")
    again = DualTower(dataclasses.replace(cfg, content_lags=2))
    assert not init_from(again, tmp_path / "content")
    torch.testing.assert_close(again.content_bias.weight.detach(), torch.tensor([0.4, -0.1]))
    longer = DualTower(dataclasses.replace(cfg, content_lags=3))
    assert any("content term: 2 of 3" in n for n in init_from(longer, tmp_path / "content"))
    torch.testing.assert_close(longer.content_bias.weight.detach(), torch.tensor([0.4, -0.1, 0.0]))
    assert any("content term dropped" in n for n in init_from(DualTower(cfg), tmp_path / "content"))


@pytest.mark.parametrize("exclude_history", [True, False])
def test_serving_ranks_every_item_exactly_with_the_term(synthetic_demo, tmp_path, exclude_history):
    rec = open_demo(synthetic_demo, tmp_path)
    history = ["m3", "m7", "m11"]
    before = [r.item.id for r in rec.recommend(history, k=5, exclude_history=exclude_history).items]
    model, feats = rec.model, synthetic_demo["features"]
    model.content_bias = ContentBias(2)
    assert [r.item.id for r in rec.recommend(history, k=5, exclude_history=exclude_history).items] == before
    with torch.no_grad():
        model.content_bias.weight.copy_(torch.tensor([0.5, 0.2]))  # large enough to reorder the list
    got = rec.recommend(history, k=5, exclude_history=exclude_history)
    scores = model.scores([[3, 7, 11]], feats, model.item_embeddings(feats))[0].numpy()
    if exclude_history:
        scores[[3, 7, 11]] = -np.inf
    order = np.argsort(-scores, kind="stable")[:5]
    assert [r.item.id for r in got.items] == [f"m{i}" for i in order]
    assert [r.item.id for r in got.items] != before
    np.testing.assert_allclose([r.score for r in got.items], scores[order], atol=1e-4)
    # the exact rank of an item agrees with the ranking
    third = got.items[2].item.id
    if third not in history:
        assert rec.rank_of(third, history) == 3 - sum(r.item.id in history for r in got.items[:2])
    # an upload changes the store's rows: its content is scored on the next query, not a stale copy's
    new_id, _ = rec.add_item("A new thing", image=png_bytes(30, 20, (10, 200, 30)))
    feats = rec._features
    scores = model.scores([[3, 7, 11]], feats, torch.from_numpy(rec._emb))[0].numpy()
    if exclude_history:
        scores[[3, 7, 11]] = -np.inf
    live = np.array(sorted(rec._views))
    order = live[np.argsort(-scores[live], kind="stable")][:5]
    after = rec.recommend(history, k=5, exclude_history=exclude_history)
    assert [r.item.id for r in after.items] == [rec._views[i].id for i in order]
    np.testing.assert_allclose([r.score for r in after.items], scores[order], atol=1e-4)
    assert rec.rank_of(new_id, history) == int((scores[live] > scores[rec._row_of[new_id]]).sum()) + 1
