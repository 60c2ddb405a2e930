"""scripts/movielens1m_items.py: MovieLens-1M items with their year and genres as fields, the rest unchanged."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from PIL import Image

from dtrec.data.jsonl import read_items

ROOT = Path(__file__).resolve().parents[1]
MOVIES = ROOT / "tests" / "fixtures" / "movielens" / "ml-1m-posters" / "movies.dat"
spec = importlib.util.spec_from_file_location("movielens1m_items", ROOT / "scripts" / "movielens1m_items.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def test_items_get_year_and_genres_and_keep_everything_else(tmp_path):
    src = tmp_path / "shared" / "movielens-1m"
    src.mkdir(parents=True)
    (tmp_path / "shared" / "posters").mkdir()
    Image.new("RGB", (20, 30), (200, 10, 10)).save(tmp_path / "shared" / "posters" / "1.jpg")
    items = [{"id": "1", "title": "Toy Story (1995)", "text": "Toy Story (1995). Genres: Animation.",
              "image": "../posters/1.jpg"},
             {"id": "32", "title": "Twelve Monkeys (1995)", "text": "t", "image": None},
             {"id": "99999", "title": "Not in movies.dat", "text": "x"}]
    with gzip.open(src / "items.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(o) + "\n" for o in items)
    out = tmp_path / "out" / "items.jsonl.gz"
    assert script.main(["--items", str(src / "items.jsonl.gz"), "--movies", str(MOVIES), "--out", str(out)]) == 0
    with gzip.open(out, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert [r["id"] for r in rows] == ["1", "32", "99999"]
    assert rows[0]["genres"] == ["Animation", "Children's", "Comedy"] and rows[0]["year"] == 1995
    assert rows[1]["genres"] == ["Drama", "Sci-Fi"] and rows[1]["image"] is None
    assert rows[2]["genres"] == [] and "year" not in rows[2], "a movie movies.dat lacks gets no made-up fields"
    assert rows[0]["image"] == str((tmp_path / "shared" / "posters" / "1.jpg").resolve())
    for r, o in zip(rows, items):
        assert (r["title"], r["text"]) == (o["title"], o["text"])
    meta = read_items(out)[0].meta  # what `dtrec prepare jsonl` keeps: the demo's genre filter reads it
    assert meta == {"year": 1995, "genres": ["Animation", "Children's", "Comedy"]}
