"""FusionEncoder and DualTower: shapes, masks, towers, save/load and feature checks."""

import dataclasses
import json

import pytest
import torch

from dtrec.config import ModelConfig, read_model_config
from dtrec.features import Features
from dtrec.model import CheckpointError, DualTower, FeatureMismatchError, FusionEncoder
from dtrec.train.checkpoint import init_from
from synthetic import planted_dataset, tiny_model_config


def _features(n=30, seed=0, dims=None, missing=0.3):
    return planted_dataset(n_items=n, n_users=4, seed=seed, dims=dims, missing=missing)[1]


def _encoder(dims, **kw):
    torch.manual_seed(0)
    return FusionEncoder(dims, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_positions=8, **kw).eval()


@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_towers_return_unit_vectors_of_model_width(objective):
    f = _features()
    m = DualTower(tiny_model_config(f, objective=objective)).eval()
    items = m.item_embeddings(f, batch_size=7)
    users = m.user_embeddings([[1, 2, 3], [4], list(range(25))], f)
    assert items.shape == (30, 32) and users.shape == (3, 32)
    assert torch.allclose(items.norm(dim=1), torch.ones(30), atol=1e-5)
    assert torch.allclose(users.norm(dim=1), torch.ones(3), atol=1e-5)


def test_padding_holds_no_information():
    dims = {"text": 6, "image": 5}
    enc = _encoder(dims)
    g = torch.Generator().manual_seed(0)
    vals = {m: torch.randn(2, 5, d, generator=g) for m, d in dims.items()}
    pres = {m: torch.ones(2, 5, dtype=torch.bool) for m in dims}
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True
    for causal in (False, True):
        base = enc(vals, pres, padding, causal=causal)
        garbage = {m: v.clone() for m, v in vals.items()}
        for v in garbage.values():
            v[1, 3:] = 1e4 * torch.randn_like(v[1, 3:])
        out = enc(garbage, pres, padding, causal=causal)
        torch.testing.assert_close(out, base, rtol=0, atol=1e-6)
        # ... and a padded row scores like the same sequence without padding.
        alone = enc({m: v[1:2, :3] for m, v in vals.items()}, {m: p[1:2, :3] for m, p in pres.items()},
                    padding[1:2, :3], causal=causal)
        torch.testing.assert_close(base[1:2, :3], alone, rtol=1e-5, atol=1e-5)
        assert (base[1, 3:] == 0).all()


def test_missing_modality_is_ignored_but_present_content_matters():
    dims = {"text": 6, "image": 5}
    enc = _encoder(dims)
    g = torch.Generator().manual_seed(1)
    vals = {m: torch.randn(1, 3, d, generator=g) for m, d in dims.items()}
    pres = {m: torch.ones(1, 3, dtype=torch.bool) for m in dims}
    pres["image"][0, 1] = False
    pad = torch.zeros(1, 3, dtype=torch.bool)
    base = enc(vals, pres, pad)
    changed = {m: v.clone() for m, v in vals.items()}
    changed["image"][0, 1] = torch.randn(5, generator=g) * 50
    torch.testing.assert_close(enc(changed, pres, pad), base, rtol=0, atol=1e-6)
    changed["text"][0, 1] += 1.0
    assert not torch.allclose(enc(changed, pres, pad), base, atol=1e-4)


def test_causal_positions_do_not_see_the_future():
    dims = {"text": 4}
    enc = _encoder(dims)
    vals = {"text": torch.randn(1, 4, 4)}
    pres = {"text": torch.ones(1, 4, dtype=torch.bool)}
    pad = torch.zeros(1, 4, dtype=torch.bool)
    enc.reverse_positions = False  # with positions counted from the end, every position id would shift
    base = enc(vals, pres, pad, causal=True)
    later = {"text": vals["text"].clone()}
    later["text"][0, 3] += 5.0
    out = enc(later, pres, pad, causal=True)
    torch.testing.assert_close(out[0, :3], base[0, :3], rtol=0, atol=1e-6)
    assert not torch.allclose(out[0, 3], base[0, 3])


def test_single_modality_model_and_other_catalog_same_encoder():
    f = _features(dims={"text": 9}, missing=0.0)
    m = DualTower(tiny_model_config(f)).eval()
    other = _features(n=13, seed=5, dims={"text": 9}, missing=0.0)
    assert m.item_embeddings(other).shape == (13, 32)
    assert m.user_embeddings([[0, 12]], other).shape == (1, 32)


def test_save_load_gives_identical_scores_and_config(tmp_path):
    f = _features()
    m = DualTower(tiny_model_config(f, share_towers=False)).eval()
    m.save_pretrained(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["encoder"] == "synthetic" and cfg["modality_dims"] == {"text": 16, "image": 12}
    m2 = DualTower.from_pretrained(str(tmp_path / "ck"))
    assert not m2.training and not m2.config.share_towers
    h = [[1, 2], [3, 4, 5]]
    s1 = m.user_embeddings(h, f) @ m.item_embeddings(f).T
    s2 = m2.user_embeddings(h, f) @ m2.item_embeddings(f).T
    assert torch.equal(s1, s2)


def test_shared_towers_store_one_encoder_and_separate_towers_differ():
    f = _features()
    shared = DualTower(tiny_model_config(f))
    sep = DualTower(tiny_model_config(f, share_towers=False))
    assert not any(k.startswith("separate_item_encoder") for k in shared.state_dict())
    assert shared.item_encoder is shared.user_encoder
    assert sep.item_encoder is not sep.user_encoder


def test_strict_load_rejects_foreign_weights(tmp_path):
    f = _features()
    DualTower(tiny_model_config(f)).save_pretrained(tmp_path / "ck")
    cfg_path = tmp_path / "ck" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["share_towers"] = False  # the weights now lack the item tower the config asks for
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing"):
        DualTower.from_pretrained(str(tmp_path / "ck"))
    with pytest.raises(FileNotFoundError):
        DualTower.from_pretrained(str(tmp_path))


def test_check_features_rejects_other_encoder_or_dims():
    f = _features()
    m = DualTower(tiny_model_config(f))
    m.check_features(f)
    wrong_enc = Features("offline", f.values, f.present)
    with pytest.raises(FeatureMismatchError, match="checkpoint expects features of encoder 'synthetic'"):
        m.check_features(wrong_enc)
    with pytest.raises(ValueError, match="dims"):
        m.item_embeddings(_features(dims={"text": 16, "image": 7}))
    clip = DualTower(tiny_model_config(f, encoder="clip-vit-b-32"))
    clip.check_features(Features("clip:ViT-B-32:openai", f.values, f.present))  # the same feature space


def test_a_text_only_model_reads_the_text_of_fuller_features_and_a_fuller_model_refuses_less():
    f = _features()
    text = f.select(["text"])
    m = DualTower(tiny_model_config(text)).eval()
    assert torch.equal(m.item_embeddings(f), m.item_embeddings(text))  # the image modality is ignored
    assert torch.equal(m.user_embeddings([[1, 2, 3]], f), m.user_embeddings([[1, 2, 3]], text))
    full = DualTower(tiny_model_config(f))
    with pytest.raises(FeatureMismatchError, match="dims"):
        full.check_features(text)


def test_empty_history_and_out_of_range_index_are_clear_errors():
    f = _features()
    m = DualTower(tiny_model_config(f)).eval()
    with pytest.raises(ValueError, match="empty"):
        m.user_embeddings([[]], f)
    with pytest.raises(ValueError, match="index 99"):
        m.user_embeddings([[1, 99]], f)


@pytest.mark.parametrize("tower", ["fusion", "adaptor"])
def test_init_from_keeps_shared_positions_and_fills_separate_towers(tmp_path, tower):
    f = _features()
    src = DualTower(tiny_model_config(f, max_len=10, tower=tower))
    src.save_pretrained(tmp_path / "pre")
    dst = DualTower(tiny_model_config(f, max_len=4, share_towers=False, tower=tower))
    notes = init_from(dst, tmp_path / "pre")

    def positions(m: DualTower) -> torch.Tensor:
        return (m.user_encoder if tower == "fusion" else m.sequence_encoder).position.weight.detach()

    assert any("5 of 5 positions taken" in n for n in notes)
    assert positions(dst).shape[0] == 5
    # Positions count back from the last item: row p is "p items ago" in both tables.
    torch.testing.assert_close(positions(dst), positions(src)[:5])
    longer = DualTower(tiny_model_config(f, max_len=14, tower=tower))
    built = positions(longer).clone()
    assert any("11 of 15 positions taken" in n for n in init_from(longer, tmp_path / "pre"))
    torch.testing.assert_close(positions(longer)[:11], positions(src))
    torch.testing.assert_close(positions(longer)[11:], built[11:])  # as built
    # A history no longer than the init's window reads the same through the longer table.
    history = [[1, 2, 3]]
    torch.testing.assert_close(longer.eval().user_embeddings(history, f), src.eval().user_embeddings(history, f))
    if tower == "fusion":  # the adaptor's encoder counts back from the last item whatever the config says
        absolute = DualTower(tiny_model_config(f, max_len=14, tower=tower, reverse_positions=False))
        assert any("re-initialised (15 positions)" in n for n in init_from(absolute, tmp_path / "pre"))
        assert any("item tower" in n for n in notes)
        torch.testing.assert_close(dst.separate_item_encoder.in_proj["text"][0].weight,
                                   src.user_encoder.in_proj["text"][0].weight)


def test_init_from_a_shared_adaptor_checkpoint_gives_separate_towers_a_zero_correction(tmp_path):
    f = _features()
    src = DualTower(tiny_model_config(f, tower="adaptor"))
    src.save_pretrained(tmp_path / "pre")
    dst = DualTower(tiny_model_config(f, tower="adaptor", share_towers=False))
    notes = init_from(dst, tmp_path / "pre")  # the checkpoint has no correction: it must start at zero
    assert any("history correction" in n for n in notes)
    for p in dst.history_correction.parameters():
        assert bool((p == 0).all())
    torch.testing.assert_close(dst.item_adaptor.adaptor["text"].gate.weight, src.item_adaptor.adaptor["text"].gate.weight)


def test_merge_init_config_takes_the_checkpoints_tower_and_experts(tmp_path):
    from dtrec.train.checkpoint import merge_init_config

    f = _features()
    DualTower(tiny_model_config(f, tower="adaptor", n_experts=3)).save_pretrained(tmp_path / "pre")
    merged = merge_init_config(tiny_model_config(f), tmp_path / "pre")
    assert merged.tower == "adaptor" and merged.n_experts == 3


def test_init_differences_name_the_settings_a_run_does_not_share_with_its_init(tmp_path):
    from dtrec.train.checkpoint import init_differences

    f = _features()
    pre = tiny_model_config(f, tower="adaptor", n_experts=3, repeat_bias=True, temperature=0.07)
    DualTower(pre).save_pretrained(tmp_path / "pre")
    assert init_differences(pre, tmp_path / "pre") == []
    run = tiny_model_config(f, temperature=0.05)  # another tower too, but the architecture always comes from the init
    assert init_differences(run, tmp_path / "pre") == ["temperature 0.05 (the init: 0.07)",
                                                       "repeat_bias False (the init: True)"]


def test_architecture_conflicts_name_only_the_given_fields_that_differ_from_the_init(tmp_path):
    from dtrec.train.checkpoint import architecture_conflicts

    f = _features()
    DualTower(tiny_model_config(f, tower="adaptor", n_experts=3)).save_pretrained(tmp_path / "pre")
    base = read_model_config(tmp_path / "pre")
    assert architecture_conflicts({"tower": "adaptor", "d_model": base.d_model, "temperature": 9.0},
                                  tmp_path / "pre") == []  # the same architecture; a setting is no conflict
    assert architecture_conflicts({"n_experts": 5, "d_model": base.d_model}, tmp_path / "pre") == [
        "--n-experts 5 (the init: 3)"]


def test_settings_from_init_take_the_score_terms_or_every_setting_but_the_given_ones(tmp_path):
    from dtrec.train.checkpoint import settings_from_init

    f = _features()
    pre = tiny_model_config(f, tower="adaptor", repeat_bias=True, content_lags=2, temperature=0.07, max_len=4)
    DualTower(pre).save_pretrained(tmp_path / "pre")
    run = tiny_model_config(f, temperature=0.05, max_len=6)
    terms = settings_from_init(run, tmp_path / "pre", given={"max_len"})
    assert (terms.repeat_bias, terms.content_lags, terms.temperature, terms.max_len) == (True, 2, 0.05, 6)
    every = settings_from_init(run, tmp_path / "pre", given={"max_len"}, every=True)
    assert (every.repeat_bias, every.content_lags, every.temperature, every.max_len) == (True, 2, 0.07, 6)
    assert every.tower == run.tower  # the architecture is merge_init_config's, not a setting
    kept = settings_from_init(run, tmp_path / "pre", given={"repeat_bias", "content_lags"})
    assert (kept.repeat_bias, kept.content_lags) == (run.repeat_bias, run.content_lags)


def test_subtract_last_starts_as_the_plain_model_and_can_push_the_last_item_down():
    f = Features("synthetic", {"text": torch.randn(12, 8)}, {"text": torch.ones(12, dtype=torch.bool)})
    cfg = ModelConfig(encoder="synthetic", modality_dims=f.dims, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=6,
                      tower="adaptor", n_experts=2, dropout=0.0, emb_dropout=0.0, adaptor_dropout=0.0)
    torch.manual_seed(0)
    plain = DualTower(cfg).eval()
    torch.manual_seed(0)
    sub = DualTower(dataclasses.replace(cfg, subtract_last=True)).eval()
    histories = [[0, 3, 5], [7, 2]]
    assert torch.allclose(plain.user_embeddings(histories, f), sub.user_embeddings(histories, f), atol=1e-6)
    items = sub.item_embeddings(f)
    with torch.no_grad():
        sub.last_item_weight.fill_(5.0)
    scores = sub.user_embeddings(histories, f) @ items.T
    assert int(scores[0].argmin()) == 5 and int(scores[1].argmin()) == 2


def test_subtract_last_needs_the_adaptor_and_the_causal_read_out():
    with pytest.raises(ValueError, match="subtract_last needs"):
        ModelConfig(modality_dims={"text": 8}, d_model=16, n_heads=2, tower="adaptor", objective="cloze",
                    subtract_last=True)


def test_init_from_moves_between_models_with_and_without_the_last_item_weight(tmp_path):
    f = Features("synthetic", {"text": torch.randn(10, 8)}, {"text": torch.ones(10, dtype=torch.bool)})
    cfg = ModelConfig(encoder="synthetic", modality_dims=f.dims, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=6,
                      tower="adaptor", n_experts=2)
    DualTower(cfg).save_pretrained(tmp_path / "plain")
    with_weight = DualTower(dataclasses.replace(cfg, subtract_last=True))
    assert "last-item weight initialised at zero" in init_from(with_weight, tmp_path / "plain")
    assert with_weight.last_item_weight.item() == 0.0
    with torch.no_grad():
        with_weight.last_item_weight.fill_(0.7)
    with_weight.save_pretrained(tmp_path / "weighted")
    assert any("dropped" in n for n in init_from(DualTower(cfg), tmp_path / "weighted"))


def test_a_saved_checkpoint_carries_a_card_that_says_what_it_reads_and_claims_no_licence(tmp_path):
    f = _features()
    DualTower(tiny_model_config(f, tower="adaptor")).save_pretrained(tmp_path / "ckpt")
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert f"reading `{f.encoder}` features" in card and "adaptor towers" in card
    assert "license" not in card.split("---")[1] and "More Information Needed" not in card


def test_scorer_is_the_cosine_plus_both_terms_and_keeps_its_item_vectors_until_asked_again():
    f = _features()
    m = DualTower(tiny_model_config(f, tower="adaptor", repeat_bias=True, content_lags=2)).eval()
    with torch.no_grad():
        m.repeat_bias.weight.normal_()
        m.content_bias.weight.normal_()
    histories = [[1, 2, 3], [4], list(range(25))]
    expected = (m.user_embeddings(histories, f) @ m.item_embeddings(f).T + m.history_offsets(histories, 30)
                + m.content_offsets(histories, f))
    score = m.scorer(f, item_batch_size=7)
    torch.testing.assert_close(score(histories), expected)
    assert score(histories).dtype == torch.float32
    # The item vectors are computed once: a changed model changes the user side of an old scorer only.
    with torch.no_grad():
        for p in m.item_adaptor.parameters():
            p.add_(1.0)
    assert not torch.allclose(m.scorer(f)(histories), score(histories))
