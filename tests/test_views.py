"""The item-level multi-modal views (dtrec/train/views.py): which items they train on, and fine-tuning with them
beside the next-item loss (`FinetuneConfig.item_weight`) keeps an item's modalities together."""

from __future__ import annotations

import json

import pytest
import torch
from synthetic import paired_features, planted_dataset, tiny_finetune_config, tiny_model_config
from test_pretrain import rule_domain

from dtrec.config import FinetuneConfig
from dtrec.data.catalog import Dataset
from dtrec.features import Features
from dtrec.model import DualTower
from dtrec.train import distributed as D
from dtrec.train.finetune import FinetuneObjective, dataset_objective, finetune
from dtrec.train.pretrain import cross_modal_eval
from dtrec.train.views import ItemViewObjective, multimodal_table, views_and_pairs


def test_multimodal_table_takes_items_with_every_modality_and_no_cold_ones():
    a = rule_domain("a", 1, image=False)
    b = rule_domain("b", 2, image=True, cold=[3])
    table = multimodal_table([a, b])
    assert len(table) == len(b[1]) - 1
    assert bool(table.present["image"].all())
    torch.testing.assert_close(table.values["text"][3], b[1].values["text"][4])


def _paired_planted(n_items: int = 60, cold: list[int] | None = None) -> tuple[Dataset, Features]:
    """A planted next-item rule over items whose text and image are two noisy views of one latent."""
    ds, _ = planted_dataset(n_items=n_items, n_users=240, seed=3)
    ds = Dataset(ds.catalog, ds.interactions, name=ds.name, cold_items=list(cold or []))
    return ds, paired_features(n=n_items, seed=5)


def _batch(model: DualTower, ds: Dataset):
    seqs = [s[:6] for s in ds.train_sequences()[:16]]
    length = max(map(len, seqs))
    items = torch.tensor([s[:-1] + [0] * (length - len(s)) for s in seqs])
    padding = torch.arange(length - 1).unsqueeze(0) >= torch.tensor([len(s) - 1 for s in seqs]).unsqueeze(1)
    targets = torch.tensor([s[1:] + [-1] * (length - len(s)) for s in seqs])
    return items.masked_fill(padding, -1), padding, None, targets


def test_weighted_views_add_exactly_their_loss_and_draw_from_view_items_only():
    ds, f = _paired_planted(cold=[0, 1])
    model = DualTower(tiny_model_config(f, tower="adaptor", adaptor_dropout=0.0)).eval()
    seqs = ds.train_sequences()
    plain = dataset_objective(model, ds, f, seqs, "all", 0)
    assert plain.views is None
    both = dataset_objective(model, ds, f, seqs, "all", 0, item_weight=0.5, item_batch=16)
    # the views see the items that have an image and are not cold (paired_features: the first 10 lack one)
    assert len(both.view_items) == len(f) - 10
    batch = _batch(model, ds)
    torch.manual_seed(0)
    total = both(*batch)
    torch.manual_seed(0)
    expect = plain(*batch) + 0.5 * both.item_view_loss()
    torch.testing.assert_close(total, expect)
    assert float(total.detach()) > float(plain(*batch).detach())  # the views' loss is positive: it added something
    # at weight 0 nothing is drawn and the loss is the next-item loss alone
    zero = FinetuneObjective(model, f, "all", 0, None, plain.held_out, both.views, both.view_items, 0.0)
    state = torch.get_rng_state()
    torch.testing.assert_close(zero(*batch), plain(*batch))
    assert torch.equal(torch.get_rng_state(), state)


class _Recorder(torch.nn.Module):
    """Stands in for the views: records the items it is given."""

    def __init__(self, info: D.DistInfo):
        super().__init__()
        self.info = info
        self.seen: list[torch.Tensor] = []

    def forward(self, values, present):
        self.seen.append(values["text"])
        return values["text"].sum() * 0, None


def test_processes_draw_disjoint_slices_of_one_permutation():
    ds, f = _paired_planted()
    model = DualTower(tiny_model_config(f, tower="adaptor"))
    rows = multimodal_table([(ds, f)])
    seen = []
    for rank in (0, 1):
        rec = _Recorder(D.DistInfo(rank=rank, world_size=2))
        obj = FinetuneObjective(model, f, "all", 0, views=rec, view_items=rows, item_weight=1.0, item_batch=20)
        torch.manual_seed(7)  # the same seed and draws on every process
        obj.item_view_loss()
        seen.append(rec.seen[0])
    assert seen[0].shape[0] == seen[1].shape[0] == 10
    texts = [{tuple(r.tolist()) for r in s} for s in seen]
    assert not texts[0] & texts[1]  # no item in both halves of the gathered batch


def test_item_weight_needs_views_and_is_checked():
    ds, f = _paired_planted()
    model = DualTower(tiny_model_config(f, tower="adaptor"))
    with pytest.raises(ValueError, match="item views"):
        FinetuneObjective(model, f, "all", 0, item_weight=1.0)
    with pytest.raises(ValueError, match="item_weight"):
        FinetuneConfig(model=model.config, item_weight=-1.0)
    with pytest.raises(ValueError, match="item_batch_size"):
        FinetuneConfig(model=model.config, item_weight=1.0, item_batch_size=1)


def test_view_pairs_encode_only_the_views_they_need_and_refuse_unknown_ones():
    views, pairs = views_and_pairs(("text", "image"), "t-vt, vt-vt")
    assert pairs == [("t", "vt"), ("vt", "vt")] and set(views) == {"t", "vt"}
    assert views_and_pairs(("text", "image"))[1] == [("v", "v"), ("v", "t"), ("t", "t"), ("vt", "vt")]
    for bad in ("t-x", "t", ","):
        with pytest.raises(ValueError, match="view pairs"):
            views_and_pairs(("text", "image"), bad)
    ds, f = _paired_planted()
    model = DualTower(tiny_model_config(f, tower="adaptor"))
    assert ItemViewObjective(model, pairs="t-vt").pairs == [("t", "vt")]


@pytest.mark.slow
def test_fine_tuning_with_item_views_aligns_text_with_image(tmp_path):
    ds, f = _paired_planted()
    aligned = {}
    for weight in (0.0, 1.0):
        cfg = tiny_finetune_config(f, model={"tower": "adaptor", "n_experts": 2, "adaptor_dropout": 0.1,
                                             "temperature": 0.1}, epochs=15, item_weight=weight,
                                   item_batch_size=32, seed=0)
        result = finetune(ds, f, cfg, tmp_path / str(weight), progress=False)
        model = DualTower.from_pretrained(str(tmp_path / str(weight) / "best"))
        aligned[weight] = cross_modal_eval(model, f, list(range(len(f))))["text_to_image@1"]
        assert result["test"]["recall@10"] >= 0.8  # the next-item rule is still learned
    # a random item tower matches text to image at chance (1/50); the next-item loss alone does not align them
    assert aligned[1.0] >= 0.6
    assert aligned[1.0] >= aligned[0.0] + 0.3, aligned
    recorded = json.loads((tmp_path / "1.0" / "train_config.json").read_text())["config"]
    assert recorded["item_weight"] == 1.0 and recorded["item_batch_size"] == 32
