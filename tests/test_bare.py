"""The bare training loop (benchmarks/bare.py, a deliberate copy of dtrec's model) computes dtrec's loss:
same weights, same batch, same number."""

from __future__ import annotations

import pytest
import torch

from benchmarks.bare import bare_model, padded_examples
from dtrec.model import DualTower
from dtrec.sequences import build_examples
from dtrec.train.batching import Collator
from dtrec.train.finetune import FinetuneObjective
from synthetic import planted_dataset, tiny_model_config


@pytest.fixture(scope="module")
def planted():
    return planted_dataset(n_items=40, n_users=30, length=(3, 14))


def test_bare_loss_equals_dtrec_objective_with_the_same_weights(planted):
    ds, feats = planted
    cfg = tiny_model_config(feats, max_len=6)
    torch.manual_seed(3)
    dtrec = DualTower(cfg).eval()
    bare = bare_model(cfg).eval()
    state = {k.removeprefix("user_encoder."): v for k, v in dtrec.state_dict().items()
             if not k.endswith("mask_token")}
    bare.load_state_dict(state, strict=True)  # same names, same shapes: the same model
    assert sum(p.numel() for p in bare.parameters()) == sum(
        p.numel() for n, p in dtrec.named_parameters() if not n.endswith("mask_token"))

    examples = build_examples(ds.train_sequences(), "causal", cfg.max_len)[:24]
    b = Collator("causal")(examples)
    with torch.no_grad():
        ref = FinetuneObjective(dtrec, feats, "all")(b["items"], b["padding"], None, b["targets"])
        padded = padded_examples(examples, cfg.max_len)
        assert padded["items"].shape == (len(examples), cfg.max_len)  # full width, unlike the collator
        table = [feats.values[m].float() for m in bare.modalities]
        got = bare(padded["items"], padded["padding"], padded["targets"], table)
    assert torch.isfinite(ref) and got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_bare_training_steps_reduce_the_loss(planted):
    ds, feats = planted
    cfg = tiny_model_config(feats, max_len=6)
    torch.manual_seed(0)
    model = bare_model(cfg).train()
    data = padded_examples(build_examples(ds.train_sequences(), "causal", cfg.max_len), cfg.max_len)
    table = [feats.values[m].float() for m in model.modalities]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(data["items"], data["padding"], data["targets"], table)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
