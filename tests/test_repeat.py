"""The repeat term (dtrec/model/repeat.py): the batched offsets against the plain definition, the model with
it at zero is the model without it, training learns its sign from the data, and serving applies it."""

import dataclasses

import numpy as np
import pytest
import torch
from synthetic import open_demo, padded_batch, planted_dataset, tiny_finetune_config, tiny_model_config

from dtrec.config import ModelConfig
from dtrec.model import DualTower
from dtrec.model.repeat import (RepeatBias, history_offsets, repeat_offsets, repeat_offsets_at,
                                repeat_offsets_reference)
from dtrec.train.checkpoint import init_from
from dtrec.train.finetune import FinetuneObjective, finetune


def test_batched_offsets_match_the_plain_definition_at_every_position():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, generator=g)
    # repeats inside a history, histories longer than the weights, one of a single item
    histories = [[3, 1, 3, 3, 0, 2, 3], [4], [2, 2, 1]]
    items, padding = padded_batch(histories)
    n = 6
    every = repeat_offsets(weight, items, padding, torch.arange(n))
    assert every.shape == (3, 7, n)
    for b, h in enumerate(histories):
        for t in range(len(h)):
            expect = repeat_offsets_reference(weight.tolist(), [h[: t + 1]], n)[0]
            torch.testing.assert_close(every[b, t], torch.tensor(expect), rtol=0, atol=1e-6)
        assert (every[b, len(h):] == 0).all()  # padded positions carry nothing
    # inference's scatter over whole histories: the same, and an item older than the weights gets the last one
    torch.testing.assert_close(history_offsets(weight, histories, n),
                               torch.tensor(repeat_offsets_reference(weight.tolist(), histories, n)))
    assert (history_offsets(weight, [[], [1]], n)[0] == 0).all()
    # any candidate list, duplicates included, picks the same columns
    cand = torch.tensor([3, 3, 0, 5])
    torch.testing.assert_close(repeat_offsets(weight, items, padding, cand), every[:, :, cand])


def test_offsets_at_chosen_positions_match_the_batched_ones_left_or_right_padded():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(4, generator=g)
    histories = [[3, 1, 3, 3, 0, 2, 3], [4], [2, 2, 1]]
    items, padding = padded_batch(histories)
    left = torch.stack([torch.roll(items[b], int(padding[b].sum())) for b in range(3)])
    lpad = torch.stack([torch.roll(padding[b], int(padding[b].sum())) for b in range(3)])
    for it, pd in ((items, padding), (left, lpad)):
        queries = ~pd & (torch.rand(pd.shape, generator=g) < 0.6)
        queries[1, (~pd[1]).nonzero()[0]] = True  # the one-item history asks too
        dense = repeat_offsets(weight, it, pd, torch.arange(6))
        torch.testing.assert_close(repeat_offsets_at(weight, it, pd, 6, queries), dense[queries])


def _features_and_config(**kw):
    ds, f = planted_dataset(n_items=12, n_users=4)
    return f, tiny_model_config(f, tower="adaptor", n_heads=2, n_experts=2, max_len=6, **kw)


@pytest.mark.parametrize("tower", ["adaptor", "fusion"])
def test_at_zero_the_model_scores_as_without_it_and_its_weights_move_history_items(tower):
    f, cfg = _features_and_config()
    cfg = dataclasses.replace(cfg, tower=tower)
    torch.manual_seed(0)
    plain = DualTower(cfg).eval()
    torch.manual_seed(0)
    rep = DualTower(dataclasses.replace(cfg, repeat_bias=True)).eval()
    histories = [[0, 3, 5], [7, 2], [1, 1, 1, 1, 1, 1, 1, 9]]
    items = plain.item_embeddings(f)
    assert plain.history_offsets(histories, len(f)) is None
    torch.testing.assert_close(rep.scores(histories, f, items), plain.scores(histories, f, items))
    with torch.no_grad():
        rep.repeat_bias.weight.fill_(-5.0)
    scores = rep.scores(histories, f, items)
    for b, h in enumerate(histories):
        worst = set(scores[b].argsort()[: len(set(h))].tolist())
        assert worst == set(h)
    assert scores[2, 1] < scores[2, 9] - 10  # each occurrence counts: 1 is seven times in the history, 9 once
    # the whole history counts, older than the window or not: item 4 sits eight places from the end
    long = [[4] + [5] * 7 + [6]]
    assert rep.scores(long, f, items)[0, 4] < -40 and (rep.scores(long, f, items)[0, 4] -
                                                      plain.scores(long, f, items)[0, 4]).item() == pytest.approx(-50)


def test_the_repeat_term_needs_the_causal_read_out():
    with pytest.raises(ValueError, match="repeat_bias needs the causal objective"):
        ModelConfig(modality_dims={"text": 8}, d_model=16, n_heads=2, objective="cloze", repeat_bias=True)


def test_the_loss_pushes_the_term_down_when_targets_are_new_and_up_when_they_repeat():
    f, cfg = _features_and_config(repeat_bias=True)
    torch.manual_seed(0)
    model = DualTower(cfg)
    objective = FinetuneObjective(model, f)
    items = torch.tensor([[0, 1, 2, 3], [4, 5, 6, -1]])
    padding = items < 0
    new = torch.tensor([[1, 2, 3, 7], [5, 6, 8, -1]])  # each next item is one the user never had
    same = items.clone()  # each next item is the one the user has just had
    grads = []
    for targets in (new, same):
        model.zero_grad()
        objective(items, padding, None, targets).backward()
        grads.append(model.repeat_bias.weight.grad[0].item())
    assert grads[0] > 0 > grads[1]  # gradient descent: down for new targets, up for repeats


def test_training_on_histories_without_repeats_ranks_the_last_item_down(tmp_path):
    ds, f = planted_dataset(n_items=30, n_users=120)  # the planted next item is never the last one
    cfg = tiny_finetune_config(f, model={"repeat_bias": True, "tower": "adaptor", "n_heads": 2, "n_experts": 2},
                               epochs=10, evaluate_test=False)
    finetune(ds, f, cfg, tmp_path, progress=False)
    w = DualTower.from_pretrained(str(tmp_path / "last")).repeat_bias.values().detach()
    assert w[0] < -0.02 and (w[:-1] < 0).all()  # (no training window here is long enough to read the last)


def test_init_from_starts_the_repeat_term_at_zero_keeps_a_matching_one_and_drops_it_when_off(tmp_path):
    f, cfg = _features_and_config()
    DualTower(cfg).save_pretrained(tmp_path / "plain")
    rep = DualTower(dataclasses.replace(cfg, repeat_bias=True))
    assert "repeat term initialised at zero" in init_from(rep, tmp_path / "plain")
    assert (rep.repeat_bias.weight == 0).all()
    with torch.no_grad():
        rep.repeat_bias.weight.fill_(-0.3)
    rep.save_pretrained(tmp_path / "rep")
    again = DualTower(dataclasses.replace(cfg, repeat_bias=True))
    assert not init_from(again, tmp_path / "rep")
    assert torch.allclose(again.repeat_bias.weight, torch.full((cfg.max_len,), -0.3))
    with torch.no_grad():  # distinct offsets, so the carry-over below is checked place by place
        rep.repeat_bias.weight.copy_(-0.1 * torch.arange(1, cfg.max_len + 1, dtype=torch.float))
    rep.save_pretrained(tmp_path / "rep")
    longer = DualTower(dataclasses.replace(cfg, repeat_bias=True, max_len=cfg.max_len + 3))
    assert any("repeat term:" in n and "oldest offset" in n for n in init_from(longer, tmp_path / "rep"))
    w = rep.repeat_bias.weight.detach()
    torch.testing.assert_close(longer.repeat_bias.weight[: cfg.max_len].detach(), w)
    assert (longer.repeat_bias.weight[cfg.max_len:] == w[-1]).all()  # older places: what the init applied to them
    # The carried-over term scores a history of the init's window exactly as the init does.
    items, padding = torch.tensor([[1, 2, 3, 1]]), torch.zeros(1, 4, dtype=torch.bool)
    cands = torch.arange(6)
    torch.testing.assert_close(longer.repeat_bias(items, padding, cands), rep.repeat_bias(items, padding, cands))
    shorter = DualTower(dataclasses.replace(cfg, repeat_bias=True, max_len=2))
    init_from(shorter, tmp_path / "rep")
    torch.testing.assert_close(shorter.repeat_bias.weight.detach(), w[:2])
    assert any("repeat term dropped" in n for n in init_from(DualTower(cfg), tmp_path / "rep"))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_serving_with_history_shown_applies_the_repeat_term(synthetic_demo, tmp_path, sign):
    rec = open_demo(synthetic_demo, tmp_path)
    history = ["m3", "m7", "m11"]
    hidden = [r.item.id for r in rec.recommend(history, k=5).items]
    rec.model.repeat_bias = RepeatBias(rec.model.config.max_len)
    with torch.no_grad():
        rec.model.repeat_bias.weight.fill_(sign * 0.3)  # offsets of 3 (scale 10)
    assert [r.item.id for r in rec.recommend(history, k=5).items] == hidden  # hiding history: the term changes nothing
    shown = rec.recommend(history, k=5, exclude_history=False)
    ids = [r.item.id for r in shown.items]
    if sign > 0:  # a catalog of re-buys: the history comes first
        assert set(ids[:3]) == set(history)
    else:
        assert not set(ids) & set(history) and ids == hidden
    scores = [r.score for r in shown.items]
    assert scores == sorted(scores, reverse=True)
    # the exact score of a shown history item: its cosine plus its offset
    model, feats = rec.model, synthetic_demo["features"]
    user = model.user_embeddings([[3, 7, 11]], feats)[0]
    cos = (model.item_embeddings(feats) @ user).numpy()
    for r in shown.items:
        if r.item.id in history:
            assert np.isclose(r.score, cos[int(r.item.id[1:])] + 3.0, atol=1e-4)
