"""The store kept in step (dtrec.serving.sync): new weights recompute stored embeddings and keep uploads."""

import shutil

from synthetic import open_demo, tiny_dual_tower

from dtrec.service import Recommender
from dtrec.serving.sync import state_fingerprint


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
