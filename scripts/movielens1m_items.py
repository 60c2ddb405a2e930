"""MovieLens-1M's items.jsonl with each movie's year and genres as fields, for a demo's catalog.

usage: python scripts/movielens1m_items.py --items ITEMS.jsonl.gz --movies movies.dat --out OUT.jsonl.gz

The shared items file names the genres only inside `text`; the demo's genre filter and its measurements read
`meta["genres"]`, which `dtrec prepare jsonl` fills from an item's extra fields. Ids, titles, texts and images are
kept as they are (image paths made absolute, so OUT can live anywhere): the prepared catalog, its split and its
feature cache's fingerprint are those of the file without the fields.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

from dtrec.data.movielens import read_ml1m_movies


def with_genres(items: list[dict], movies: dict[str, tuple[int | None, list[str]]], base: Path) -> list[dict]:
    """Each item with `year` and `genres` from `movies` (id -> (year, genres)), its image path made absolute."""
    out = []
    for obj in items:
        obj = dict(obj)
        year, genres = movies.get(str(obj["id"]), (None, []))
        if year is not None:
            obj["year"] = year
        obj["genres"] = list(genres)
        if obj.get("image") and not Path(obj["image"]).is_absolute():
            obj["image"] = str((base / obj["image"]).resolve())
        out.append(obj)
    return out


def main(argv: list[str] | None = None) -> int:
    """Write OUT; report how many items got genres."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", required=True, type=Path, help="MovieLens-1M items.jsonl(.gz)")
    p.add_argument("--movies", required=True, type=Path, help="MovieLens-1M movies.dat")
    p.add_argument("--out", required=True, type=Path, help="items.jsonl(.gz) to write")
    args = p.parse_args(argv)
    opener = gzip.open if args.items.suffix == ".gz" else open
    with opener(args.items, "rt", encoding="utf-8") as fh:
        items = [json.loads(line) for line in fh if line.strip()]
    movies = {str(m.id): (m.year, m.genres) for m in read_ml1m_movies(args.movies)}
    rows = with_genres(items, movies, args.items.resolve().parent)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    writer = gzip.open if args.out.suffix == ".gz" else open
    with writer(args.out, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    n = sum(bool(r["genres"]) for r in rows)
    print(f"wrote {args.out}: {len(rows)} items, {n} with genres")
    return 0


if __name__ == "__main__":
    sys.exit(main())
