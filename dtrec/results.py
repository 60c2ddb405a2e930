"""Results files and their tables: the metric names, the results.json layout, one Markdown renderer.

A recipe's `results.json` maps model name -> split -> metrics (the structure
`dtrec evaluate --json` prints per model), plus its provenance under `"meta"`.
The model card, the demo folder and `scripts/seed_table.py` render it with the
functions here; nothing else formats a results table.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

PROVENANCE_KEY = "meta"  # a recipe's results.json records commit, seed, data and commands under this key
CUTOFFS = (10, 50)


def metric_keys(ks: Sequence[int] = CUTOFFS) -> list[str]:
    """Names of the ranking metrics for cutoffs `ks`, in report order (what `dtrec.eval.rank_metrics` returns)."""
    return [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]


METRIC_KEYS = tuple(metric_keys())
METRIC_NAMES = {**{f"recall@{k}": f"Recall@{k}" for k in CUTOFFS}, **{f"ndcg@{k}": f"NDCG@{k}" for k in CUTOFFS},
                "mrr": "MRR", "last_item_first": "last item first"}


def metric_table(results: dict) -> dict:
    """`results` without its provenance entry: only model -> split -> metrics."""
    return {k: v for k, v in results.items() if k != PROVENANCE_KEY}


def seed_summary(runs: Sequence[dict], split: str = "test",
                 keys: Sequence[str] = METRIC_KEYS) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Mean, sample standard deviation and run count of each model's metrics over recipe results of several seeds.

    `runs` are recipe `results.json` objects (model -> split -> metrics); a model or split that a
    run lacks is left out of that model's statistics, and the deviation of a single run is 0.
    """
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    models = [m for m in dict.fromkeys(k for r in runs for k in r) if m != PROVENANCE_KEY]
    for model in models:
        rows = [r[model][split] for r in runs if split in r.get(model, {})]
        if not rows:
            continue
        stats = {}
        for key in keys:
            vals = [float(row[key]) for row in rows if key in row]
            if not vals:
                continue
            stats[key] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))
        out[model] = stats
    return out


# --------------------------------------------------------------------------- Markdown
def markdown_table(head: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """Lines of a Markdown table; `align` has one letter per column, "r" right-aligned (numbers), else left."""
    sep = "".join(" ---: |" if align[i:i + 1] == "r" else " --- |" for i in range(len(head)))
    lines = ["| " + " | ".join(str(h) for h in head) + " |", "|" + sep]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def results_table(results: dict, split: str, main: str | None = None) -> list[str]:
    """Markdown table lines of every model's metrics on `split` (`main` in bold); [] when none has it."""
    results = metric_table(results)
    rows = [(name, splits[split]) for name, splits in results.items() if isinstance(splits.get(split), dict)]
    if not rows:
        return []
    keys = [k for k in METRIC_KEYS if any(k in m for _, m in rows)]
    body = []
    for name, metrics in rows:
        label = f"**{name}**" if name == main else name
        if "n" in metrics:
            label += f" (n={int(metrics['n'])})"
        body.append([label] + [f"{metrics[k]:.4f}" if k in metrics else "–" for k in keys])
    return markdown_table(["model"] + [METRIC_NAMES[k] for k in keys], body, "l" + "r" * len(keys))


def seed_table(runs: Sequence[dict], split: str = "test") -> list[str]:
    """Markdown table lines of mean ± sample deviation per model over recipe results of several seeds.

    The share of cases whose last history item ranks first is a column when the runs report it.
    """
    echo = any("last_item_first" in v for r in runs for m, splits in r.items() if m != PROVENANCE_KEY
               for v in splits.values() if isinstance(v, dict))
    keys = list(METRIC_KEYS) + (["last_item_first"] if echo else [])
    body = []
    for model, stats in seed_summary(runs, split, keys).items():
        n = max((s[2] for s in stats.values()), default=0)
        body.append([f"{model} ({n})"] + [f"{stats[k][0]:.4f} ± {stats[k][1]:.4f}" if k in stats else "–"
                                          for k in keys])
    return markdown_table(["model (runs)"] + [METRIC_NAMES[k] for k in keys], body, "l" + "r" * len(keys))
