"""`dtrec.model.dropout`: the fast CPU dropout keeps what nn.Dropout promises (rate, scale, independence)."""

import pytest
import torch
from torch import nn

from dtrec.baselines.sasrec import SASRec, SASRecConfig
from dtrec.model.dropout import Dropout, keep_mask, use_fast_dropout
from dtrec.model.fusion import FusionEncoder

N = 1_000_000


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_keep_rate_and_independence(p):
    torch.manual_seed(0)
    keep = keep_mask((N,), p)
    assert keep.dtype == torch.bool and keep.shape == (N,)
    rate = keep.float().mean().item()
    sd = ((1 - p) * p / N) ** 0.5
    assert abs(rate - (1 - p)) < 6 * sd, rate
    # neighbours share a 64-bit draw (four 16-bit numbers): they must still be independent
    k = keep.view(-1, 4).float()
    for a, b in ((0, 1), (1, 2), (2, 3), (0, 3)):
        both = (k[:, a] * k[:, b]).mean().item()
        assert abs(both - (1 - p) ** 2) < 6 * ((1 - p) ** 2 * (1 - (1 - p) ** 2) / (N // 4)) ** 0.5, (a, b)
    # each of the four positions keeps at the same rate (no biased bits)
    per_pos = k.mean(0)
    assert (per_pos - (1 - p)).abs().max() < 6 * ((1 - p) * p / (N // 4)) ** 0.5, per_pos


def test_training_output_and_gradient_are_masked_and_scaled():
    torch.manual_seed(1)
    drop = Dropout(0.2).train()
    x = torch.randn(300, 70, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] * 1.25)
    assert 0.75 < kept.float().mean() < 0.85
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * 1.25)
    # different masks each call; the same under the same seed
    torch.manual_seed(7)
    a = drop(torch.ones(1000))
    b = drop(torch.ones(1000))
    torch.manual_seed(7)
    assert not torch.equal(a, b) and torch.equal(drop(torch.ones(1000)), a)
    # odd sizes, empty tensors and bf16
    assert drop(torch.ones(3, 5, 7)).shape == (3, 5, 7) and drop(torch.ones(0, 4)).shape == (0, 4)
    z = drop(torch.ones(999, dtype=torch.bfloat16))
    assert z.dtype == torch.bfloat16 and set(z.unique().tolist()) <= {0.0, 1.25}


def test_eval_mode_and_edge_rates_are_nn_dropout():
    x = torch.randn(50, 8)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_models_use_it_everywhere_dropout_was():
    enc = FusionEncoder({"text": 8, "image": 6}, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.5,
                        emb_dropout=0.2)
    sas = SASRec(SASRecConfig(num_items=10, hidden=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.3))
    for model, rates in ((enc, {0.5, 0.2}), (sas, {0.3})):
        drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        assert drops and all(type(m) is Dropout for m in drops)
        assert {m.p for m in drops} == rates
    # the swap leaves weights alone
    plain = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    use_fast_dropout(plain)
    assert type(plain[1]) is Dropout and plain[1].p == 0.1
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
