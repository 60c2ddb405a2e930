"""ItemIndex against a brute-force torch reference; add/remove/reconstruct; save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dtrec.index import IndexFileError, ItemIndex


def _data(n=3000, d=32, q=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(q, d, generator=g)


def _brute(x, q, k):
    s = F.normalize(q, dim=-1) @ F.normalize(x, dim=-1).T
    return s.topk(k, dim=-1)


def test_flat_matches_brute_force_exactly():
    x, q = _data()
    ids = np.arange(len(x)) * 3 + 7  # ids need not be dense
    index = ItemIndex.build(ids, x, "flat")
    scores, got = index.search(q, 10)
    ref_s, ref_i = _brute(x, q, 10)
    assert (got == ids[ref_i.numpy()]).all()
    np.testing.assert_allclose(scores, ref_s.numpy(), atol=1e-5)
    assert len(index) == index.ntotal == len(x)


def test_hnsw_recall_at_10():
    x, q = _data(n=4000, q=200)
    index = ItemIndex.build(np.arange(len(x)), x, "hnsw", ef_search=64)
    _, got = index.search(q, 10)
    _, ref = _brute(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), ref.tolist())])
    assert recall >= 0.95, recall


def test_ivfpq_falls_back_to_flat_below_threshold():
    x, q = _data(n=500)
    index = ItemIndex.build(np.arange(len(x)), x, "ivfpq", ivfpq_min_items=1000)
    assert index.kind == "ivfpq" and index.effective_kind == "flat"
    _, got = index.search(q, 5)
    assert (got == _brute(x, q, 5)[1].numpy()).all()


def _clustered(n, d=32, q=100, seed=0):
    from benchmarks.data import synthetic_embeddings

    return synthetic_embeddings(n, d, seed=seed, latent=16), synthetic_embeddings(q, d, seed=seed + 1, latent=16)


def _recall(got, ref):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got.tolist(), ref.tolist())])


def test_ivfpq_refine_reranks_pq_candidates():
    x, q = _clustered(10_000)
    x_t, q_t = torch.from_numpy(x), torch.from_numpy(q)
    _, ref = _brute(x_t, q_t, 10)
    recall = {}
    for refine in ("none", "sq8"):
        index = ItemIndex.build(np.arange(len(x)), x, "ivfpq", ivfpq_min_items=10_000, nprobe=32, refine=refine)
        assert index.effective_kind == "ivfpq"
        scores, got = index.search(q, 10)
        recall[refine] = _recall(got, ref)
        assert (np.diff(scores, axis=1) <= 1e-5).all()
    # PQ codes alone mis-order close neighbours; re-ranking the 4k best candidates repairs most of it
    assert recall["sq8"] >= recall["none"] + 0.1, recall
    assert recall["sq8"] >= 0.8, recall
    with pytest.raises(ValueError, match="refine"):
        ItemIndex(8, "ivfpq", refine="exact")


def test_refined_ivfpq_hides_removed_and_saves_without_them(tmp_path):
    x, q = _clustered(11_000)
    index = ItemIndex.build(np.arange(len(x)), x, "ivfpq", ivfpq_min_items=10_000, nprobe=32, refine="flat")
    top = int(index.search(x[5:6], 1)[1][0, 0])
    assert top == 5
    assert index.remove([5, 6, 99_999]) == 2 and len(index) == len(x) - 2 and 5 not in index
    assert 5 not in index.search(x[5:6], 10)[1]
    index.add([5], x[5:6])  # back under the same id
    assert index.search(x[5:6], 1)[1][0, 0] == 5
    index.save(tmp_path / "ivf.faiss")
    loaded = ItemIndex.load(tmp_path / "ivf.faiss")
    assert loaded.effective_kind == "ivfpq" and loaded.params["refine"] == "flat" and len(loaded) == len(x) - 1
    assert 6 not in loaded and (loaded.search(q, 10)[1] == index.search(q, 10)[1]).all()
    # past 10 % removed, the refined index is re-filled with the kept vectors (same quantizers)
    loaded.remove(np.arange(100, 1300))
    assert loaded.index.ntotal == len(x) - 1 - 1200 and not loaded._tombstones
    assert loaded.search(x[2000:2001], 1)[1][0, 0] == 2000


def test_ivfpq_file_from_before_refine_loads_as_unrefined(tmp_path):
    import json

    x, q = _clustered(10_000)
    index = ItemIndex.build(np.arange(len(x)), x, "ivfpq", refine="none")
    path = index.save(tmp_path / "old.faiss")
    meta = json.loads((tmp_path / "old.faiss.json").read_text())
    for key in ("refine", "k_factor"):
        del meta["params"][key]
    (tmp_path / "old.faiss.json").write_text(json.dumps(meta))
    loaded = ItemIndex.load(path)
    assert loaded.params["refine"] == "none" and (loaded.search(q, 5)[1] == index.search(q, 5)[1]).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_add_remove_reconstruct(kind):
    x, _ = _data(n=200)
    index = ItemIndex.build(np.arange(100), x[:100], kind)
    index.add(np.arange(100, 200), x[100:])
    assert len(index) == 200
    np.testing.assert_allclose(index.reconstruct(150), F.normalize(x[150], dim=0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="already"):
        index.add([5], x[5:6])
    assert index.remove([5, 6, 999]) == 2
    assert len(index) == 198 and 5 not in index and 7 in index
    with pytest.raises(KeyError):
        index.reconstruct(5)
    # a removed item is never returned, even for its own vector
    _, got = index.search(x[5:7], 3)
    assert 5 not in got and 6 not in got and (got >= 0).all()
    # and may be added back
    index.add([5], x[5:6])
    assert index.search(x[5:6], 1)[1][0, 0] == 5


def test_search_filters_missing_hits_and_validates():
    x, q = _data(n=4)
    index = ItemIndex.build([10, 11, 12, 13], x, "flat")
    scores, ids = index.search(q[:2], 10)
    assert ids.shape == (2, 4) and (ids >= 0).all() and np.isfinite(scores).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    empty = ItemIndex(x.shape[1])
    assert empty.search(q[:1], 3)[1].shape == (1, 0)
    with pytest.raises(ValueError, match="dimension"):
        index.search(torch.randn(1, 5), 3)
    with pytest.raises(ValueError, match="non-negative"):
        index.add([-1], x[:1])
    with pytest.raises(ValueError, match="kind"):
        ItemIndex(8, "annoy")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_roundtrip(tmp_path, kind):
    x, q = _data(n=300)
    index = ItemIndex.build(np.arange(300), x, kind)
    index.remove([3])
    path = index.save(tmp_path / "i.faiss", {"count": 299})
    loaded = ItemIndex.load(path)
    assert loaded.kind == kind and loaded.stamp == {"count": 299} and len(loaded) == 299
    assert (loaded.search(q, 5)[1] == index.search(q, 5)[1]).all()
    assert not list(tmp_path.glob("*.tmp"))  # nothing left behind by the atomic write


def test_load_rejects_missing_truncated_and_garbage(tmp_path):
    x, _ = _data(n=50)
    path = ItemIndex.build(np.arange(50), x).save(tmp_path / "i.faiss")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError):
        ItemIndex.load(path)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(IndexFileError):
        ItemIndex.load(path)
    path.unlink()
    with pytest.raises(IndexFileError, match="missing"):
        ItemIndex.load(path)
