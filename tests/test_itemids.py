"""Learned item IDs (dtrec/model/itemids.py): content-only outside the table, tied to one catalog, trained by
fine-tuning where content cannot tell items apart, never for cold items."""

import json

import pytest
import torch

from dtrec.config import ModelConfig
from dtrec.features import Features
from dtrec.model import DualTower
from dtrec.model.itemids import ItemIds, row_signatures
from dtrec.model.tower import FeatureMismatchError
from dtrec.train.checkpoint import init_differences, init_from
from dtrec.train.finetune import finetune
from synthetic import planted_dataset, random_item_ids, tiny_finetune_config, tiny_model_config


def _id_model(f: Features, rows: int | None = None) -> DualTower:
    return random_item_ids(tiny_model_config(f, tower="adaptor", id_rows=rows or len(f)), f)


def _content_only(model: DualTower) -> DualTower:
    """The same model without its ID table."""
    cfg = ModelConfig.from_dict({**model.config.__dict__, "id_rows": 0})
    plain = DualTower(cfg).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("item_ids.")})
    return plain


def _with_rows(f: Features, order: list[int]) -> Features:
    return Features(f.encoder, {m: v[order] for m, v in f.values.items()},
                    {m: p[order] for m, p in f.present.items()})


def test_id_vectors_are_scaled_rows_and_zero_past_the_table():
    ids = ItemIds(4, 3, scale=2.0)
    with torch.no_grad():
        ids.weight.copy_(torch.arange(12.0).reshape(4, 3))
    out = ids(torch.tensor([1, 3, 4, 9]))
    assert torch.equal(out[:2], 2.0 * torch.tensor([[3.0, 4, 5], [9, 10, 11]]))
    assert torch.equal(out[2:], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least one row"):
        ItemIds(0, 3)


def test_ids_need_the_adaptor_tower():
    _, f = planted_dataset(n_items=10, n_users=5)
    with pytest.raises(ValueError, match="item IDs need the adaptor tower"):
        tiny_model_config(f, tower="fusion", id_rows=10)


def test_ids_change_catalog_rows_and_leave_new_items_to_content():
    _, f = planted_dataset(n_items=20, n_users=5)
    model = _id_model(f, rows=16)
    plain = _content_only(model)
    with_ids, content = model.item_embeddings(f), plain.item_embeddings(f)
    assert not torch.allclose(with_ids[:16], content[:16], atol=1e-3)
    assert torch.allclose(with_ids[16:], content[16:], atol=1e-6)  # rows past the table: content only
    assert torch.allclose(model.item_embeddings(f, ids=False), content, atol=1e-6)  # e.g. one upload on its own
    one = _with_rows(f, [0])
    assert torch.allclose(model.item_embeddings(one, ids=False), content[:1], atol=1e-6)
    # Histories read the same vectors: a model with IDs predicts differently from the same history.
    assert not torch.allclose(model.user_embeddings([[1, 2, 3]], f), plain.user_embeddings([[1, 2, 3]], f), atol=1e-3)


def test_ids_refuse_another_catalog_and_accept_the_catalog_grown():
    _, f = planted_dataset(n_items=20, n_users=5)
    model = _id_model(f)
    model.item_embeddings(f)
    grown = Features(f.encoder, {m: torch.cat([v, v[:3]]) for m, v in f.values.items()},
                     {m: torch.cat([p, p[:3]]) for m, p in f.present.items()})
    assert model.item_embeddings(grown).shape[0] == 23  # uploads appended after the catalog
    for other in (_with_rows(f, list(reversed(range(20)))), _with_rows(f, list(range(19))),
                  planted_dataset(n_items=20, n_users=5, seed=1)[1]):
        with pytest.raises(FeatureMismatchError, match="learned item IDs for the 20 items"):
            model.item_embeddings(other)
        with pytest.raises(FeatureMismatchError, match="another catalog"):
            model.user_embeddings([[0, 1]], other)
    # A fp16 round trip (a demo folder's features) is the same catalog.
    half = Features(f.encoder, {m: v.half().float() for m, v in f.values.items()}, f.present)
    assert model.item_embeddings(half).shape[0] == 20


def test_a_saved_id_checkpoint_keeps_its_ids_and_its_catalog(tmp_path):
    _, f = planted_dataset(n_items=20, n_users=5)
    model = _id_model(f)
    model.save_pretrained(tmp_path / "ck")
    back = DualTower.from_pretrained(str(tmp_path / "ck"))
    assert back.config.id_rows == 20
    assert torch.allclose(back.item_embeddings(f), model.item_embeddings(f), atol=1e-6)
    assert torch.equal(back.item_ids.row_signature, row_signatures(f, 20))
    with pytest.raises(FeatureMismatchError):
        back.item_embeddings(_with_rows(f, list(reversed(range(20)))))


def test_an_init_keeps_its_ids_only_for_its_own_catalog(tmp_path):
    _, f = planted_dataset(n_items=20, n_users=5)
    _, g = planted_dataset(n_items=20, n_users=5, seed=1)
    source = _id_model(f)
    source.save_pretrained(tmp_path / "ids")
    _content_only(source).save_pretrained(tmp_path / "plain")

    same = _id_model(f)
    assert init_from(same, tmp_path / "ids") == []
    assert torch.equal(same.item_ids.weight, source.item_ids.weight)

    other = _id_model(g)
    assert "item IDs initialised at zero (the init's are another catalog's)" in init_from(other, tmp_path / "ids")
    assert not other.item_ids.weight.any()

    fresh = _id_model(f)
    assert init_from(fresh, tmp_path / "plain") == ["item IDs initialised at zero"]
    assert not fresh.item_ids.weight.any()

    plain = DualTower(tiny_model_config(f, tower="adaptor"))
    assert init_from(plain, tmp_path / "ids") == ["the checkpoint's item IDs dropped (item_ids off)"]
    # The ID table's size comes from the catalog, not from the init: no "setting unlike the init's" to warn of.
    assert init_differences(plain.config, tmp_path / "ids") == []


def _twins(n_pairs: int = 20, n_users: int = 200):
    """Items in pairs with identical features and a next-item rule that tells the twins apart: content alone
    cannot rank the right twin above the other."""
    ds, f = planted_dataset(n_items=2 * n_pairs, n_users=n_users, dims={"text": 16})
    v = f.values["text"].clone()
    v[1::2] = v[0::2]
    return ds, Features(f.encoder, {"text": v}, f.present)


@pytest.mark.slow
def test_finetuning_with_ids_tells_look_alike_items_apart_and_leaves_cold_items_alone(tmp_path):
    ds, f = _twins()
    ds.cold_items = [38, 39]
    common = dict(model={"tower": "adaptor", "objective": "causal"}, epochs=10, lr=1e-2)
    plain = finetune(ds, f, tiny_finetune_config(f, **common), tmp_path / "plain", progress=False)
    ids = finetune(ds, f, tiny_finetune_config(f, item_ids=True, **common), tmp_path / "ids", progress=False)
    # Twins tie under content alone (at best half the credit); IDs break the tie.
    assert plain["test"]["ndcg@10"] < 0.7
    assert ids["test"]["ndcg@10"] > plain["test"]["ndcg@10"] + 0.15
    best = DualTower.from_pretrained(str(tmp_path / "ids" / "best"))
    assert best.config.id_rows == 40
    weight = best.item_ids.weight
    assert not weight[[38, 39]].any()  # never a candidate nor in a history: no gradient, no decay away from 0
    assert weight[:38].abs().sum(dim=1).gt(0).all()
    record = json.loads((tmp_path / "ids" / "train_config.json").read_text())
    assert record["config"]["item_ids"] is True and record["config"]["model"]["id_rows"] == 40


def test_the_catalog_check_catches_two_swapped_items_with_equal_statistics():
    _, f = planted_dataset(n_items=20, n_users=5)
    # Item 7 becomes item 3 with two pairs of components exchanged: same values, same mean |value| and norm,
    # which a per-row summary statistic cannot tell apart; then the two swap places.
    twin = Features(f.encoder, {m: v.clone() for m, v in f.values.items()}, f.present)
    for v in twin.values.values():
        v[7] = v[3][[1, 0, 3, 2, *range(4, v.shape[1])]]
    model = _id_model(twin)
    order = list(range(20))
    order[3], order[7] = 7, 3
    with pytest.raises(FeatureMismatchError, match="another catalog"):
        model.item_embeddings(_with_rows(twin, order))
    assert model.item_embeddings(twin).shape[0] == 20
