"""Recommender end to end on a tiny synthetic demo folder (untrained DualTower, tiny-clip encoder): queries,
uploads retrievable at once and after a restart, the index rebuilt, browsing and search."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import GENRES, N_ITEMS, open_demo, png_bytes

from dtrec.service import InputError, Recommender


def _rows(rec: Recommender) -> int:
    return len(rec.store)


def test_recommend_matches_brute_force(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path)
    history = ["m3", "m7", "m11"]
    res = rec.recommend(history, k=5)
    # reference: the towers run directly on the catalog features
    model, feats = rec.model, synthetic_demo["features"]
    user = model.user_embeddings([[3, 7, 11]], feats)[0]
    scores = model.item_embeddings(feats) @ user
    scores[[3, 7, 11]] = -np.inf
    expect = [f"m{i}" for i in scores.topk(5).indices.tolist()]
    assert [r.item.id for r in res.items] == expect
    assert [r.rank for r in res.items] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(res.items, res.items[1:]))
    assert all(r.reason_id in history and r.reason.startswith("because you added Movie") for r in res.items)
    assert res.latency_ms > 0
    view = res.items[0].item
    assert view.meta["genres"] and not view.is_new
    assert view.image is None or view.image.startswith(str(tmp_path))
    with_hist = rec.recommend(history, k=N_ITEMS, exclude_history=False)
    assert {"m3", "m7", "m11"} <= {r.item.id for r in with_hist.items}
    # the reason is the history item with the highest item-tower cosine
    emb = model.item_embeddings(feats)
    top = int(res.items[0].item.id[1:])
    best = max([3, 7, 11], key=lambda h: float(emb[top] @ emb[h]))
    assert res.items[0].reason_id == f"m{best}"
    # rank_of agrees with recommend
    assert rec.rank_of(expect[1], history) == 2
    assert rec.rank_of("m3", history) is None


def test_add_item_is_retrievable_now_and_after_restart(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path)
    n0 = _rows(rec)
    text_id, ms = rec.add_item("Zebra quantum orchestra")
    assert text_id.startswith("new-") and ms > 0
    img_id, _ = rec.add_item("A red poster", "Red \x07square\x00 art.", image=png_bytes(600, 300))
    assert _rows(rec) == n0 + 2
    # a text query equal to the item's only content gives the same item-tower input: rank 1
    assert rec.search("Zebra quantum orchestra", k=3).items[0].item.id == text_id
    hit = rec.search("Zebra quantum orchestra", k=3).items[0]
    assert hit.item.is_new and hit.reason == "matches your query" and hit.score == pytest.approx(1, abs=1e-4)
    view = rec.get(img_id)
    assert view.text == "Red square art." and view.is_new
    with Image.open(view.image) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= 256 and im.size[0] == 2 * im.size[1]
    assert any(r.item.id == img_id for r in rec.recommend([img_id, "m1"], k=N_ITEMS, exclude_history=False).items)
    assert rec.similar(img_id, k=3).items[0].item.id != img_id
    assert isinstance(rec.rank_of(img_id, ["m1", "m2"]), int)
    assert rec.about()["n_uploads"] == 2
    rec.close()

    again = open_demo(synthetic_demo, tmp_path)
    assert _rows(again) == n0 + 2 and again.about()["n_uploads"] == 2
    assert again.search("Zebra quantum orchestra", k=1).items[0].item.id == text_id
    assert again.get(img_id).image == view.image
    np.testing.assert_allclose(again.index.reconstruct(again._row_of[img_id]),
                               rec._emb[rec._row_of[img_id]], atol=1e-5)


def test_restart_rebuilds_a_deleted_or_corrupt_index(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path)
    new_id, _ = rec.add_item("Only after restart")
    path = rec.store.index_path("flat")
    rec.store.close()
    path.write_bytes(b"not an index")
    again = open_demo(synthetic_demo, tmp_path)
    assert len(again.index) == N_ITEMS + 1
    assert again.search("Only after restart", k=1).items[0].item.id == new_id
    again.store.close()
    path.unlink()
    assert len(open_demo(synthetic_demo, tmp_path).index) == N_ITEMS + 1


def test_bad_queries_raise_input_error(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path, max_history=5)
    with pytest.raises(InputError, match="Add at least one item to the history."):
        rec.recommend([])
    with pytest.raises(InputError, match="nope-42"):
        rec.recommend(["m1", "nope-42"])
    with pytest.raises(InputError, match="longer than 5"):
        rec.recommend([f"m{i}" for i in range(6)])
    with pytest.raises(InputError, match=r"^k must be between 1 and 100, not 0\.$"):
        rec.recommend(["m1"], k=0)
    with pytest.raises(InputError, match=r"^k must be a whole number between 1 and 100\.$"):
        rec.similar("m1", k="ten")
    assert len(rec.recommend(["m1"], k="3").items) == 3  # the API's text is parsed here, the one place
    with pytest.raises(InputError, match="Unknown"):
        rec.similar("zzz")
    with pytest.raises(InputError, match="Type something"):
        rec.search("  \x00 ")
    with pytest.raises(InputError, match="Unknown"):
        rec.get("zzz")


def test_browsing_history_samples_and_about(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path, index="hnsw")
    assert rec.genres() == GENRES
    drama = rec.list_items(genre="Drama")
    assert drama and all("Drama" in v.meta["genres"] for v in drama)
    assert [v.id for v in rec.list_items("movie 1", limit=3)] == ["m1", "m10", "m11"]
    hist = rec.sample_history(seed=3)
    assert hist == rec.sample_history(seed=3) and 1 <= len(hist) <= rec.model.config.max_len
    assert len(rec.recommend(hist, k=5).items) == 5
    about = rec.about()
    assert about["encoder"] == "tiny-clip" and about["index"] == "hnsw" and about["n_items"] == N_ITEMS
    assert about["results"] == {"dtrec": {"test": {"ndcg@10": 0.1}}} and about["device"] in ("cpu", "cuda")


def test_popular_counts_the_stored_histories(synthetic_demo, tmp_path):
    """Before any click the demo shows the items in the most sample histories (issue 18, item 8)."""
    rec = open_demo(synthetic_demo, tmp_path / "store")
    histories = json.loads((synthetic_demo["dir"] / "histories.json").read_text())
    counts = {}
    for h in histories:
        for i in set(h):
            counts[i] = counts.get(i, 0) + 1
    expected = sorted(counts, key=lambda i: (-counts[i], int(i[1:])))[:5]
    res = rec.popular(k=5)
    assert [r.item.id for r in res.items] == expected
    assert [r.rank for r in res.items] == [1, 2, 3, 4, 5]
    assert [r.score for r in res.items] == [counts[i] / len(histories) for i in expected]
    assert res.items[0].reason == f"in {counts[expected[0]]} of {len(histories)} sample users' histories"
    with pytest.raises(InputError):
        rec.popular(k=0)
    rec.close()
    bare = tmp_path / "bare"
    shutil.copytree(synthetic_demo["dir"], bare)
    (bare / "histories.json").unlink()
    rec = Recommender.from_folder(bare, store_dir=tmp_path / "bare-store")
    assert rec.popular(k=5).items == []
    rec.close()


# --------------------------------------------------------------------------- search (issue 18, item 6)
@pytest.fixture(scope="module")
def movies(tiny_demo, tmp_path_factory):
    """A Recommender over the MovieLens fixture demo (real titles, tiny-clip features of their text)."""
    rec = Recommender.from_folder(tiny_demo, store_dir=tmp_path_factory.mktemp("search-store"))
    yield rec
    rec.close()


def _titles(res) -> list[str]:
    return [r.item.title for r in res.items]


@pytest.mark.parametrize("query, title", [
    ("toy story", "Toy Story (1995)"),
    ("Toy Story (1995)", "Toy Story (1995)"),
    ("godfather", "The Godfather (1972)"),  # a leading article may be left out
    ("les miserables", "Les Misérables (1995)"),  # accents need not be typed
    ("star tr", "Star Trek: First Contact (1996)"),  # a prefix
    ("jedi", "Return of the Jedi (1983)"),  # a word of the title
])
def test_a_title_query_returns_that_item_first(movies, query, title):
    res = movies.search(query, k=5)
    assert _titles(res)[0] == title
    assert len(res.items) == 5  # the rest of the page is filled by meaning


@pytest.mark.parametrize("query, title", [
    ("toy sotry", "Toy Story (1995)"),
    ("the godfater", "The Godfather (1972)"),
    ("raiders of the lost arc", "Raiders of the Lost Ark (1981)"),
])
def test_a_misspelt_title_finds_the_item(movies, query, title):
    assert _titles(movies.search(query, k=5))[0] == title


def test_search_by_meaning_ranks_as_the_text_encoder_does(movies):
    """A description no title matches is ranked by the frozen encoder's own text geometry: the cosine
    between the query and each item's text, the yardstick of issue 18 (not the item tower)."""
    from dtrec.data.catalog import item_text
    from dtrec.encoders import get_encoder
    from dtrec.textsearch import TitleIndex

    query = "a gangster family saga with betrayal"
    catalog = list(movies.catalog)
    titles = TitleIndex()
    for i, it in enumerate(catalog):
        titles.add(i, it.title)
    assert not titles.match(query)
    enc = get_encoder(movies.encoder_name, device="cpu")
    items = torch.nn.functional.normalize(enc.encode_text([item_text(it.title, it.text) for it in catalog]), dim=-1)
    q = torch.nn.functional.normalize(enc.encode_text([query]), dim=-1)[0]
    cos = (items @ q).numpy()
    expected = [catalog[i].id for i in np.argsort(-cos, kind="stable")[:8]]
    res = movies.search(query, k=8)
    assert [r.item.id for r in res.items] == expected
    assert np.allclose([r.score for r in res.items], np.sort(cos)[::-1][:8], atol=1e-3)  # batched vs alone


def test_an_item_without_a_picture_is_not_favoured_over_the_same_text_with_one(tiny_demo, tmp_path):
    rec = Recommender.from_folder(tiny_demo, store_dir=tmp_path)
    text = "A lighthouse keeper befriends a whale during a long northern winter."
    with_image, _ = rec.add_item("Keeper of the Light (2024)", text, image=png_bytes(40, 60, (10, 90, 160)))
    without, _ = rec.add_item("Keeper of the Light (2024)", text)
    for query in ("a lonely lighthouse keeper and a whale", "keeper of the light"):
        res = rec.search(query, k=len(rec.index))
        rank = {r.item.id: r for r in res.items}
        assert rank[with_image].score == pytest.approx(rank[without].score, abs=1e-6), query
        assert abs(rank[with_image].rank - rank[without].rank) == 1, query
    rec.close()


def test_search_within_a_genre(movies):
    res = movies.search("star trek", k=10, genre="Sci-Fi")
    assert _titles(res)[0] == "Star Trek: First Contact (1996)"
    assert res.items and all("Sci-Fi" in r.item.meta["genres"] for r in res.items)
    comedy = movies.search("toy story", k=5, genre="Comedy")
    assert _titles(comedy)[0] == "Toy Story (1995)" and all("Comedy" in r.item.meta["genres"] for r in comedy.items)
    drama = movies.search("toy story", k=5, genre="Drama")
    assert "Toy Story (1995)" not in _titles(drama) and all("Drama" in r.item.meta["genres"] for r in drama.items)




def _id_model(features):
    """An adaptor model with random item IDs for the demo's catalog."""
    from dtrec.config import ModelConfig
    from synthetic import random_item_ids

    torch.manual_seed(0)
    return random_item_ids(ModelConfig(encoder="tiny-clip", modality_dims=features.dims, d_model=32, n_layers=1,
                                       n_heads=2, d_ff=64, max_len=10, tower="adaptor", id_rows=len(features)),
                           features)


def test_a_model_with_item_ids_serves_its_catalog_and_scores_uploads_by_content(tmp_path):
    from synthetic import write_synthetic_demo

    (tmp_path / "data").mkdir()
    demo = write_synthetic_demo(tmp_path / "data", tmp_path / "demo", make_model=_id_model)
    rec = open_demo(demo, tmp_path / "store")
    model, feats = rec.model, demo["features"]
    assert model.config.id_rows == N_ITEMS
    # Folder weights and features are fp16: the catalog is still recognised as the IDs' own.
    user = model.user_embeddings([[3, 7, 11]], feats)[0]
    scores = model.item_embeddings(feats) @ user
    scores[[3, 7, 11]] = -np.inf
    assert [r.item.id for r in rec.recommend(["m3", "m7", "m11"], k=5).items] == \
        [f"m{i}" for i in scores.topk(5).indices.tolist()]
    new_id, _ = rec.add_item("Zebra quantum orchestra")
    row = rec._row_of[new_id]
    content = model.item_embeddings(rec._features, ids=False)[row].numpy()
    np.testing.assert_allclose(rec._emb[row], content, atol=1e-5)  # an upload has no ID: content alone
    assert new_id in {r.item.id for r in rec.recommend(["m1"], k=N_ITEMS).items}  # indexed, ranked
    assert len(rec.recommend([new_id, "m1"], k=5).items) == 5  # a history holding an upload is served too
