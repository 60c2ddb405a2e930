"""Title look-up (dtrec.textsearch)."""

from dtrec.textsearch import TitleIndex, title_keys


def test_title_index_follows_uploads_and_deletions():
    """Titles added or removed after the look-up copy was built are found, or no longer found, at once."""
    assert title_keys("Cité des enfants perdus, La (City of Lost Children, The) (1995)") == [
        "la cite des enfants perdus", "cite des enfants perdus", "the city of lost children", "city of lost children"]
    titles = TitleIndex()
    titles.add(0, "Toy Story (1995)")
    titles.add(1, "The Godfather (1972)")
    assert [r for r, _, _ in titles.match("toy story")] == [0]  # builds the copy
    titles.add(2, "Toy Soldiers (1991)")
    assert [(r, tier) for r, tier, _ in titles.match("toy s")] == [(0, 1), (2, 1)]
    assert [(r, tier) for r, tier, _ in titles.match("toy soldeirs")] == [(2, 3)]
    titles.remove(0)
    assert titles.match("toy story") == [] and titles.match("toy stroy") == []
    titles.add(1, "Quiet Lake (2020)")  # a row retitled
    assert titles.match("godfather") == [] and [r for r, _, _ in titles.match("quite lake")] == [1]
    # a description is not a typo of a title, although difflib rates the pair 0.8
    titles.add(3, "The Amazing Panda Adventure (1995)")
    assert titles.match("space adventure") == []
