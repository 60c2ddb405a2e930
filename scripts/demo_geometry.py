"""The embedded demo's geometry: how spread its item embeddings are, how often it echoes, what one movie brings.

usage: python scripts/demo_geometry.py [--demo assets/demo] [--out docs/bench/demo-geometry.json]
Prints the numbers and writes them as JSON with provenance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from dtrec.data.catalog import Catalog
from dtrec.features import load_features
from dtrec.model import DualTower
from dtrec.provenance import git_commit
from item_content import item_content  # scripts/ is on the path when a script runs

# Among the most rated, then three less so; a title missing from the demo's catalog is skipped (MovieLens-1M
# names Star Wars by its episode).
EXAMPLES = ("Star Wars (1977)", "Star Wars: Episode IV - A New Hope (1977)", "Toy Story (1995)", "Fargo (1996)",
            "Alien (1979)", "Sense and Sensibility (1995)", "Aladdin (1992)")
K = 10
N_POPULAR = 20  # "the popularity list": the movies most frequent in the demo's histories


def list_agreement(lists: torch.Tensor, queries: list[int], genres: list[set[str]],
                   popular: set[int]) -> dict[str, float]:
    """Mean share of each query's list that shares a genre with the query, and that is among the popular items."""
    genre, pop = [], []
    for q, row in zip(queries, lists.tolist()):
        genre.append(sum(bool(genres[j] & genres[q]) for j in row) / len(row))
        pop.append(sum(j in popular for j in row) / len(row))
    return {"genre_share": sum(genre) / len(genre), "popular_share": sum(pop) / len(pop)}


def _top(scores: torch.Tensor, queries: list[int], k: int = K) -> torch.Tensor:
    """Each row's top-k items, the query itself left out (the demo hides the history)."""
    scores = scores.clone()
    scores[torch.arange(len(queries)), torch.tensor(queries)] = float("-inf")
    return scores.topk(k, dim=1).indices


def main(argv: list[str] | None = None) -> int:
    """Measure and report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="assets/demo")
    p.add_argument("--out", default="docs/bench/demo-geometry.json")
    args = p.parse_args(argv)
    demo = Path(args.demo)
    model = DualTower.from_pretrained(str(demo / "model")).float().eval()
    items = pd.read_parquet(demo / "catalog" / "items.parquet")
    catalog = Catalog.from_frame(items, root=demo / "catalog")
    feats = load_features(demo / "catalog", model.config.encoder, catalog)
    feats = type(feats)(feats.encoder, {m: v.float() for m, v in feats.values.items()}, feats.present)
    with torch.no_grad():
        emb = model.item_embeddings(feats)
        content = item_content(model, feats)
        histories = json.loads((demo / "histories.json").read_text())
        row = {str(i): j for j, i in enumerate(items["id"])}
        hs = [[row[str(i)] for i in (h["items"] if isinstance(h, dict) else h) if str(i) in row] for h in histories]
        hs = [h for h in hs if h]
        last = torch.tensor([h[-1] for h in hs])
        # the model's score (with its repeat term, if it has one) and the towers' cosine alone
        echo = float((model.scores(hs, feats, emb).argmax(1) == last).float().mean())
        echo_cosine = float(((model.user_embeddings(hs, feats) @ emb.T).argmax(1) == last).float().mean())
        examples = {}
        for title in EXAMPLES:
            hit = items.index[items["title"] == title]
            if len(hit) == 0:
                continue
            i = int(hit[0])
            s = (model.user_embeddings([[i]], feats) @ emb.T)[0]
            s[i] = float("-inf")
            examples[title] = [items["title"][int(j)] for j in s.topk(5).indices]
        counts = pd.Series([1 for h in hs for _ in h]).groupby([i for h in hs for i in h]).sum()
        ranked = [int(j) for j in counts.sort_values(ascending=False, kind="stable").index]
        popular = [items["title"][j] for j in ranked[:10]]
        # every movie with genres as a one-movie history: is its list like it, or the popularity list?
        genres = [set(json.loads(m).get("genres") or []) if isinstance(m, str) else set() for m in items["meta"]]
        queries = [i for i, g in enumerate(genres) if g]
        one = {"model": _top(model.scores([[i] for i in queries], feats, emb), queries),
               "item_tower_neighbours": _top(emb[queries] @ emb.T, queries),
               "popularity_list": _top(-torch.tensor(_ranks(ranked, len(items)), dtype=torch.float)
                                       .repeat(len(queries), 1), queries)}
        top_popular = set(ranked[:N_POPULAR])
        one_movie = {name: list_agreement(lists, queries, genres, top_popular) for name, lists in one.items()}
    out = {"demo": str(demo), "n_items": content["n_items"],
           "item_mean_pairwise_cosine": content["item_mean_pairwise_cosine"],
           "own_text_hit@10": {"item_tower": content["own_text_hit@10_item_tower"],
                               "raw_text_features": content["own_text_hit@10_raw_text"]},
           "histories": len(hs), "last_item_first": echo, "last_item_first_cosine": echo_cosine,
           "one_movie_top5": examples,
           "one_movie_top10": {"queries": len(queries), "popular": f"the {N_POPULAR} most frequent in the histories",
                               **one_movie},
           "most_frequent_in_histories": popular,
           "provenance": {"commit": git_commit(), "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          "command": "python scripts/demo_geometry.py " + " ".join(argv or sys.argv[1:])}}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "provenance"}, indent=2))
    return 0


def _ranks(ranked: list[int], n: int) -> list[int]:
    """Each item's place in `ranked` (items not in it after all of them)."""
    place = {j: r for r, j in enumerate(ranked)}
    return [place.get(j, n) for j in range(n)]


if __name__ == "__main__":
    sys.exit(main())
