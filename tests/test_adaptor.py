"""The adaptor towers: feature standardisation, the MoE adaptor, the sequence encoder, DualTower(tower="adaptor")."""

import pytest
import torch

from dtrec.config import ModelConfig
from dtrec.model import DualTower
from dtrec.model.adaptor import AdaptorItemEncoder, FeatureNorm, MoEAdaptor, SequenceEncoder
from dtrec.train.finetune import finetune
from synthetic import planted_dataset, tiny_finetune_config, tiny_model_config


def test_feature_norm_fits_present_rows_only_and_is_saved():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 5.0
    present = torch.ones(50, dtype=torch.bool)
    present[:10] = False
    x[:10] = 0.0  # missing rows are zeros and must not pull the mean
    norm = FeatureNorm(4)
    norm.fit(x, present)
    z = norm(x[10:])
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones(4), atol=1e-5)
    assert set(norm.state_dict()) == {"mean", "scale"}
    before = norm.mean.clone()
    norm.fit(x, torch.zeros(50, dtype=torch.bool))  # nothing to fit on: keep what it had
    assert torch.equal(norm.mean, before)


def test_moe_adaptor_is_a_gated_sum_of_whitening_experts():
    torch.manual_seed(0)
    a = MoEAdaptor(6, 3, n_experts=4, dropout=0.0).eval()
    with torch.no_grad():
        a.bias.normal_()
    x = torch.randn(5, 6)
    gates = torch.softmax(x @ a.gate.weight.T, -1)
    expected = sum(gates[:, k:k + 1] * ((x - a.bias[k]) @ a.experts[k].weight.T) for k in range(4))
    torch.testing.assert_close(a(x), expected)


def test_item_embedding_is_the_mean_over_present_modalities():
    torch.manual_seed(0)
    enc = AdaptorItemEncoder({"text": 5, "image": 4}, ("text", "image"), 8, n_experts=2, dropout=0.0).eval()
    vals = {"text": torch.randn(3, 5), "image": torch.randn(3, 4)}
    pres = {"text": torch.tensor([True, True, False]), "image": torch.tensor([True, False, False])}
    out = enc(vals, pres)
    t = enc.adaptor["text"](enc.norm["text"](vals["text"]))
    i = enc.adaptor["image"](enc.norm["image"](vals["image"]))
    torch.testing.assert_close(out[0], (t[0] + i[0]) / 2)
    torch.testing.assert_close(out[1], t[1])
    assert (out[2] == 0).all()
    changed = {"text": vals["text"], "image": vals["image"].clone()}
    changed["image"][1] = 100.0  # an absent modality's values never matter
    torch.testing.assert_close(enc(changed, pres)[1], out[1])


def test_sequence_encoder_hides_padding_and_the_future():
    torch.manual_seed(0)
    enc = SequenceEncoder(8, 2, 2, 16, 0.0, 0.0, max_positions=6).eval()
    x = torch.randn(2, 4, 8)
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    base = enc(x, pad, causal=True)
    noisy = x.clone()
    noisy[1, 2:] = 1e3
    torch.testing.assert_close(enc(noisy, pad, causal=True), base)
    assert (base[1, 2:] == 0).all()
    alone = enc(x[1:2, :2], pad[1:2, :2], causal=True)
    torch.testing.assert_close(base[1:2, :2], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="position table"):
        enc(torch.randn(1, 7, 8), torch.zeros(1, 7, dtype=torch.bool))


@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_adaptor_dual_tower_serves_and_round_trips(tmp_path, objective):
    ds, f = planted_dataset(n_items=30, n_users=4, missing=0.3)
    m = DualTower(tiny_model_config(f, objective=objective, tower="adaptor", n_experts=3))
    m.fit_feature_norm(f)
    m.eval()
    items = m.item_embeddings(f, batch_size=7)
    users = m.user_embeddings([[1, 2, 3], [4], list(range(25))], f)
    assert items.shape == (30, 32) and users.shape == (3, 32)
    assert torch.allclose(items.norm(dim=1), torch.ones(30), atol=1e-5)
    m.save_pretrained(tmp_path / "ckpt")
    back = DualTower.from_pretrained(str(tmp_path / "ckpt"))
    assert back.config.tower == "adaptor"
    # the fitted standardisation travels with the weights, so an upload is transformed the same way
    torch.testing.assert_close(back.item_adaptor.norm["text"].mean, m.item_adaptor.norm["text"].mean)
    torch.testing.assert_close(back.item_embeddings(f), items)
    torch.testing.assert_close(back.user_embeddings([[1, 2, 3]], f), users[:1])


def test_adaptor_config_is_checked():
    with pytest.raises(ValueError, match="tower must be one of"):
        ModelConfig(modality_dims={"text": 4}, tower="mlp")



def test_separate_adaptor_towers_start_shared_and_correct_only_the_history(tmp_path):
    _, f = planted_dataset(n_items=30, n_users=4)
    kw = dict(tower="adaptor", n_experts=2)
    torch.manual_seed(0)
    shared = DualTower(tiny_model_config(f, **kw)).eval()
    torch.manual_seed(0)
    m = DualTower(tiny_model_config(f, share_towers=False, **kw)).eval()
    items = m.item_embeddings(f)
    users = m.user_embeddings([[1, 2]], f)
    # zero at initialisation: the same model as the shared towers
    torch.testing.assert_close(users, shared.user_embeddings([[1, 2]], f))
    with torch.no_grad():  # the correction feeds the user tower only
        for p in m.history_correction.parameters():
            p.normal_()
    torch.testing.assert_close(m.item_embeddings(f), items)
    assert not torch.allclose(m.user_embeddings([[1, 2]], f), users)
    m.save_pretrained(tmp_path / "c")
    back = DualTower.from_pretrained(str(tmp_path / "c"))
    torch.testing.assert_close(back.user_embeddings([[1, 2]], f), m.user_embeddings([[1, 2]], f))


def test_adaptor_towers_learn_the_planted_pattern(tmp_path):
    ds, f = planted_dataset(n_items=40, n_users=200)
    cfg = tiny_finetune_config(f, model={"objective": "causal", "tower": "adaptor", "n_experts": 2,
                                         "temperature": 0.1}, epochs=20)
    result = finetune(ds, f, cfg, tmp_path, progress=False)
    assert result["test"]["recall@10"] >= 0.9  # chance is 0.25
    best = DualTower.from_pretrained(str(tmp_path / "best"))
    # standardisation was fitted on the training catalog before training
    assert not torch.allclose(best.item_adaptor.norm["text"].scale, torch.ones(16))
