"""Quality and speed of the demo's text search (`Recommender.search`, what the UI and `/search` call).

    python scripts/bench_search.py                          # assets/demo -> docs/bench/search.json
    python scripts/bench_search.py --demo DIR --out PATH    # another demo folder (e.g. after a rebuild)

Genre precision@10: for every genre of the catalog's item meta, the query "<genre> movie", and a
fixed list of plain-language descriptions (below) each with the genre it should return. A result
counts when its `meta["genres"]` holds that genre. Three rankers see the same queries:

- `search`: `Recommender.search`, as served;
- `encoder`: the yardstick, the frozen text encoder alone: cosine between the query's text
  embedding and each catalog item's text (title + text), encoded afresh here;
- `item_tower`: the query as a text-only item through the item tower, nearest items by the
  tower's embeddings (how search worked before issue 18, item 6; kept as the reference).

Also the share of items without a poster among those results (the item tower favoured them).

Title look-ups: a sample of catalog titles typed in lower case without the year, and the same with
two letters swapped (a typo); hit@1 when the first result carries that title (any year: MovieLens
has two "Shall We Dance?"). Latency: wall time of `Recommender.search` over every query above,
after one warm-up call each, next to the encoder's time for the query alone (the rest is the title
look-up and the ranking), and the machine's load average. The table goes to stdout, the numbers
with their provenance (commit, date, command) to `--out`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Written once, before any measurement, and not tuned to the results: (description, expected genre).
DESCRIPTIONS = [
    ("a space adventure", "Sci-Fi"),
    ("a space opera with robots", "Sci-Fi"),  # the README's example
    ("a scary movie about ghosts and monsters", "Horror"),
    ("cowboys and gunfights in the old west", "Western"),
    ("an animated cartoon for kids", "Animation"),
    ("soldiers fighting in a war", "War"),
]
RANKERS = ("search", "encoder", "item_tower")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _file_hash(path: Path) -> str | None:
    """First 12 hex digits of a file's sha256: which weights and features were measured."""
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _bare_title(title: str) -> str:
    """'Toy Story (1995)' -> 'toy story': what a visitor types."""
    return re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip().lower()


def _typo(text: str, rng: random.Random) -> str | None:
    """`text` with two neighbouring letters of its longest word swapped, or None if no word is long enough."""
    words = text.split(" ")
    i = max(range(len(words)), key=lambda j: len(words[j]))
    w = words[i]
    spots = [j for j in range(1, len(w) - 2) if w[j].isalpha() and w[j + 1].isalpha() and w[j] != w[j + 1]]
    if len(w) < 5 or not spots:
        return None
    j = rng.choice(spots)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="assets/demo", help="demo folder (default assets/demo)")
    ap.add_argument("--out", default="docs/bench/search.json", help="JSON output (default docs/bench/search.json)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n-titles", type=int, default=200, help="catalog titles sampled for the title look-ups")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls of each query")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's, one per core); on a busy 2-core machine 1 is faster")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from dtrec.data.catalog import item_text
    from dtrec.encoders import get_encoder
    from dtrec.features import Features, cache_path, load_features
    from dtrec.service import Recommender

    demo = Path(args.demo)
    k = args.k
    with tempfile.TemporaryDirectory(prefix="bench-search-") as store:
        t0 = time.perf_counter()
        rec = Recommender.from_folder(demo, store_dir=store)
        if "text" not in rec.dims:
            raise SystemExit(f"The model in {demo} does not read text, so there is no text search to measure.")
        rec.warm_up()
        load_s = time.perf_counter() - t0
        catalog = rec.catalog
        ids = [it.id for it in catalog]
        genres_of = {it.id: set((it.meta or {}).get("genres") or []) for it in catalog}
        title_of = {it.id: it.title for it in catalog}
        no_poster = {it.id for it in catalog if not it.image}

        # the yardstick: the encoder's own geometry over the catalog's text, encoded afresh
        enc = get_encoder(rec.encoder_name, device="cpu")
        t1 = time.perf_counter()
        texts = [item_text(it.title, it.text) for it in catalog]
        item_text_emb = torch.nn.functional.normalize(enc.encode_text(texts).float(), dim=-1).numpy()
        encode_catalog_s = time.perf_counter() - t1
        cached = load_features(Path(demo) / "catalog", rec.encoder_name, catalog)
        has_text = cached.present["text"].numpy()
        cache_diff = float(np.abs(torch.nn.functional.normalize(cached.values["text"].float(), dim=-1).numpy()
                                  - item_text_emb)[has_text].max())
        # the reference: the item tower's embeddings of the catalog (all modalities, as the index holds them)
        tower_emb = rec.model.item_embeddings(cached).float().cpu().numpy()
        dims = rec.dims

        def ranked(ranker: str, q: str) -> list[str]:
            if ranker == "search":
                return [r.item.id for r in rec.search(q, k=k).items]
            raw = enc.encode_text([q]).float()
            if ranker == "encoder":
                scores = item_text_emb @ torch.nn.functional.normalize(raw, dim=-1)[0].numpy()
            else:
                values = {m: torch.zeros(1, d) for m, d in dims.items()}
                present = {m: torch.zeros(1, dtype=torch.bool) for m in dims}
                values["text"][0], present["text"][0] = raw[0], True
                qe = rec.model.item_embeddings(Features(rec.encoder_name, values, present)).float().cpu().numpy()[0]
                scores = tower_emb @ qe
            top = np.argsort(-scores, kind="stable")[:k]
            return [ids[i] for i in top]

        genres = [g for g in rec.genres() if g.lower() != "unknown"]
        queries = [(f"{g} movie", g, "genre") for g in genres] + [(d, g, "description") for d, g in DESCRIPTIONS]
        rows = []
        for q, g, kind in queries:
            row = {"query": q, "genre": g, "kind": kind, "n_genre": sum(g in s for s in genres_of.values())}
            for r in RANKERS:
                got = ranked(r, q)
                row[r] = sum(g in genres_of[i] for i in got) / k
                row[f"{r}_no_poster"] = sum(i in no_poster for i in got)
                row[f"{r}_top3"] = [title_of[i] for i in got[:3]]
            rows.append(row)

        rng = random.Random(args.seed)
        sample = rng.sample(ids, min(args.n_titles, len(ids)))
        title_cases = []
        for iid in sample:
            bare = _bare_title(title_of[iid])
            title_cases.append(("exact", bare, bare))
            typo = _typo(bare, rng)
            if typo is not None:
                title_cases.append(("typo", typo, bare))
        titles = {}
        for kind in ("exact", "typo"):
            cases = [c for c in title_cases if c[0] == kind]
            titles[kind] = {"n": len(cases)}
            for r in RANKERS:
                hits = [_bare_title(title_of[ranked(r, q)[0]]) == t for _, q, t in cases]
                titles[kind][r] = float(np.mean(hits)) if hits else float("nan")
            titles[kind]["search_misses"] = [q for _, q, t in cases
                                             if _bare_title(title_of[ranked("search", q)[0]]) != t][:20]

        all_q = [q for q, _, _ in queries] + [q for _, q, _ in title_cases]
        times, encode = [], []
        load_before = os.getloadavg()[0]
        for q in all_q:
            rec.search(q, k=k)
            for _ in range(args.repeats):
                times.append(rec.search(q, k=k).latency_ms)
                t1 = time.perf_counter()
                enc.encode_text([q])
                encode.append((time.perf_counter() - t1) * 1000)
        latency = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
                   "max_ms": float(np.max(times)), "n_calls": len(times),
                   # the query's encoding alone: what the search costs beyond it is title look-up and ranking
                   "encode_query_p50_ms": float(np.percentile(encode, 50)),
                   "encode_query_p95_ms": float(np.percentile(encode, 95)),
                   # each call less the encoding of its query timed right after: title look-up and ranking
                   "beyond_encoding_p50_ms": float(np.median(np.subtract(times, encode))),
                   "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        rec.close()

    def mean(kind: str, r: str) -> float:
        vals = [row[r] for row in rows if row["kind"] == kind]
        return float(np.mean(vals)) if vals else float("nan")

    summary = {kind: {r: mean(kind, r) for r in RANKERS} for kind in ("genre", "description")}
    # issue 18: posterless items (a few % of the catalog) filled half of some result lists
    summary["no_poster_share"] = {r: sum(row[f"{r}_no_poster"] for row in rows) / (k * len(rows)) for r in RANKERS}
    summary["no_poster_share"]["catalog"] = len(no_poster) / len(ids)
    out = {
        "provenance": {
            "command": shlex.join(["python", "scripts/bench_search.py", *(sys.argv[1:] if argv is None else argv)]),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--", "dtrec", "app.py", "scripts")),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "demo": str(demo), "encoder": rec.encoder_name, "n_items": len(ids), "k": k,
            "model_sha256": _file_hash(demo / "model" / "model.safetensors"),
            "features_sha256": _file_hash(cache_path(demo / "catalog", rec.encoder_name)),
            "torch_threads": torch.get_num_threads(), "load_s": round(load_s, 2),
            "encode_catalog_s": round(encode_catalog_s, 2), "cache_vs_fresh_text_max_abs_diff": cache_diff,
        },
        "precision_at_k": rows, "mean_precision_at_k": summary, "titles_hit_at_1": titles, "latency": latency,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    print(f"precision@{k} by genre ({len(ids)} items, encoder {rec.encoder_name})")
    print("| query | genre | items of genre | search | encoder | item tower |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['query']} | {row['genre']} | {row['n_genre']} | " +
              " | ".join(f"{row[r]:.1f}" for r in RANKERS) + " |")
    for kind, label in (("genre", '"<genre> movie", mean'), ("description", "descriptions, mean")):
        print(f"| **{label}** | | | " + " | ".join(f"**{summary[kind][r]:.2f}**" for r in RANKERS) + " |")
    share = summary["no_poster_share"]
    print(f"| items without a poster among the results (catalog: {share['catalog']:.1%}) | | | " +
          " | ".join(f"{share[r]:.1%}" for r in RANKERS) + " |")
    print()
    print("| title look-up, hit@1 | n | search | encoder | item tower |")
    print("|---|---:|---:|---:|---:|")
    for kind in ("exact", "typo"):
        print(f"| {kind} | {titles[kind]['n']} | " + " | ".join(f"{titles[kind][r]:.2f}" for r in RANKERS) + " |")
    print()
    print(f"search latency: p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms, "
          f"max {latency['max_ms']:.1f} ms over {latency['n_calls']} calls; the query's encoding alone: "
          f"p50 {latency['encode_query_p50_ms']:.1f} ms, p95 {latency['encode_query_p95_ms']:.1f} ms; "
          f"beyond it (median of the differences) {latency['beyond_encoding_p50_ms']:.1f} ms "
          f"(1-min load average {latency['load_average_1min'][0]} -> {latency['load_average_1min'][1]}, "
          f"{os.cpu_count()} CPUs)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
