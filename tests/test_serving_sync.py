"""The store kept in step (dtrec.serving.sync): new weights recompute stored embeddings and keep uploads; a
fresh store seeds from the demo folder's carried item embeddings, recomputed when stale."""

import shutil

import numpy as np
import pytest
from synthetic import N_ITEMS, open_demo, tiny_dual_tower

import dtrec.serving.sync as sync
from dtrec.config import ServeConfig
from dtrec.data.catalog import Catalog
from dtrec.features import Features
from dtrec.service import Recommender
from dtrec.serving.sync import save_item_embeddings, state_fingerprint


def test_the_weights_fingerprint_follows_every_weight():
    a, b = tiny_dual_tower(0), tiny_dual_tower(0)
    assert state_fingerprint(a) == state_fingerprint(b)
    next(b.parameters()).data[0] += 1
    assert state_fingerprint(a) != state_fingerprint(b)


def test_new_weights_refresh_stored_embeddings_and_keep_uploads(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path)
    new_id, _ = rec.add_item("Kept across models")
    rec.close()
    other = tmp_path / "demo2"
    shutil.copytree(synthetic_demo["dir"], other)
    tiny_dual_tower(7).save_pretrained(other / "model")
    rec2 = Recommender.from_folder(other, store_dir=tmp_path)
    assert rec2.search("Kept across models", k=1).items[0].item.id == new_id
    fresh = Recommender.from_folder(other, store_dir=tmp_path / "fresh")
    a = rec2.recommend(["m1", "m2"], k=8)
    b = fresh.recommend(["m1", "m2"], k=8)
    assert [r.item.id for r in a.items] == [r.item.id for r in b.items]


def test_the_default_store_is_one_per_model_and_catalog_outside_them(tmp_path, monkeypatch):
    monkeypatch.delenv("DTREC_STORE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a = sync.default_store_dir(tmp_path / "demo" / "model", tmp_path / "demo" / "catalog")
    assert a.parent == tmp_path / "cache" / "dtrec" / "store"
    assert a == sync.default_store_dir(str(tmp_path / "demo" / "model"), str(tmp_path / "demo" / "catalog"))
    assert a != sync.default_store_dir(tmp_path / "demo" / "model", tmp_path / "other" / "catalog")
    monkeypatch.setenv("DTREC_STORE_DIR", str(tmp_path / "mine"))
    assert sync.default_store_dir(tmp_path / "demo" / "model", tmp_path / "demo" / "catalog") == tmp_path / "mine"


def test_a_demo_folder_and_serve_share_the_default_store(synthetic_demo, tmp_path, monkeypatch):
    monkeypatch.delenv("DTREC_STORE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = synthetic_demo["dir"]
    rec = Recommender.from_folder(folder)
    try:
        assert rec.config.store_dir == str(sync.default_store_dir(folder.resolve() / "model",
                                                                  folder.resolve() / "catalog"))
        assert not (folder / "store").exists(), "the store is never written inside the folder served"
    finally:
        rec.close()


# --------------------------------------------------------------------------- start-up (issue 18, item 10)
def _counting_item_tower(monkeypatch) -> list[int]:
    calls, real = [], sync.item_tower

    def item_tower(model, features):
        calls.append(len(features))
        return real(model, features)

    monkeypatch.setattr(sync, "item_tower", item_tower)
    return calls


def _carried(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "item_embeddings.safetensors"), framework="np") as f:
        return f.metadata()["key"], f.get_tensor("embeddings")


def test_a_fresh_store_takes_the_carried_embeddings_without_the_item_tower(synthetic_demo, tmp_path, monkeypatch):
    folder = tmp_path / "demo"
    shutil.copytree(synthetic_demo["dir"], folder)
    key, carried = _carried(folder)
    calls = _counting_item_tower(monkeypatch)
    rec = Recommender.from_folder(folder, store_dir=tmp_path / "store")
    assert calls == []
    np.testing.assert_array_equal(rec._emb[:N_ITEMS], carried)
    expect = rec.model.item_embeddings(synthetic_demo["features"]).numpy()  # what the item tower would have given
    np.testing.assert_allclose(carried, expect, atol=1e-6)
    rec.close()
    assert _carried(folder)[0] == key  # a file that matches is left as it is


@pytest.mark.parametrize("damage", ["other weights", "other features", "corrupt"])
def test_a_stale_carried_file_is_recomputed_and_rewritten(synthetic_demo, tmp_path, monkeypatch, damage):
    folder = tmp_path / "demo"
    shutil.copytree(synthetic_demo["dir"], folder)
    good_key, good = _carried(folder)
    path = folder / "item_embeddings.safetensors"
    if damage == "other weights":
        tiny_dual_tower(7).save_pretrained(folder / "model")
    elif damage == "other features":  # the same catalog fingerprint, other values: the key sees the values
        feats = Features.load(folder / "catalog" / "features" / "tiny-clip.safetensors")
        feats.values["text"] += 0.5
        feats.save(folder / "catalog" / "features" / "tiny-clip.safetensors")
    else:
        path.write_bytes(b"not a safetensors file")
    if damage != "corrupt":  # stale embeddings under the old key, which no longer matches
        save_item_embeddings(path, np.random.default_rng(0).standard_normal(good.shape).astype(np.float32), good_key)
    calls = _counting_item_tower(monkeypatch)
    rec = Recommender.from_folder(folder, store_dir=tmp_path / "store")
    assert calls == [N_ITEMS]
    feats = Features.load(folder / "catalog" / "features" / "tiny-clip.safetensors")
    expect = rec.model.item_embeddings(feats).numpy()
    np.testing.assert_allclose(rec._emb[:N_ITEMS], expect, atol=1e-6)
    key, rewritten = _carried(folder)
    np.testing.assert_array_equal(rewritten, rec._emb[:N_ITEMS])
    assert (key != good_key) == (damage != "corrupt")
    rec.close()
    calls.clear()  # the next fresh store takes the rewritten file
    Recommender.from_folder(folder, store_dir=tmp_path / "store2").close()
    assert calls == []


def test_a_model_or_catalog_override_neither_reads_nor_writes_the_folders_file(synthetic_demo, tmp_path,
                                                                                monkeypatch):
    folder = tmp_path / "demo"
    shutil.copytree(synthetic_demo["dir"], folder)
    tiny_dual_tower(7).save_pretrained(tmp_path / "other-model")
    before = (folder / "item_embeddings.safetensors").read_bytes()
    calls = _counting_item_tower(monkeypatch)
    cfg = ServeConfig(model=str(tmp_path / "other-model"), catalog=str(folder / "catalog"),
                      store_dir=str(tmp_path / "store"))
    Recommender(cfg, demo_dir=folder).close()
    assert calls == [N_ITEMS] and (folder / "item_embeddings.safetensors").read_bytes() == before


def test_the_catalog_fingerprint_is_computed_once_per_start(synthetic_demo, tmp_path, monkeypatch):
    calls, real = [], Catalog.fingerprint

    def fingerprint(self):
        calls.append(len(self))
        return real(self)

    monkeypatch.setattr(Catalog, "fingerprint", fingerprint)
    open_demo(synthetic_demo, tmp_path / "first").close()  # seeds a fresh store
    assert calls == [N_ITEMS]
    calls.clear()
    open_demo(synthetic_demo, tmp_path / "first").close()  # a restart over the same store
    assert calls == [N_ITEMS]
