"""What the app shows and parses: captions, the API's JSON rows, request values, the "About" tables.
Plain functions of the Recommender's results; no Gradio here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from dtrec.app.events import BadInput
from dtrec.serving.errors import human_bytes

PLACEHOLDER = Path(__file__).resolve().parent / "placeholder.png"  # shipped with the package (package data)
NEW_BADGE = "new — never interacted with"


def image(view: Any) -> str:
    """The poster path of an item, or the placeholder for text-only items."""
    return view.image if view.image else str(PLACEHOLDER)


def short(title: str, n: int = 42) -> str:
    """`title` cut to `n` characters with an ellipsis."""
    return title if len(title) <= n else title[: n - 1] + "…"


def browse_caption(view: Any) -> str:
    """A catalog poster's caption: its title, marked when the item is new."""
    return f"NEW · {short(view.title)}" if view.is_new else short(view.title)


def rec_caption(r: Any) -> str:
    """A recommendation's caption: rank and title, score (and the new badge), the reason."""
    new = f" · {NEW_BADGE}" if r.item.is_new else ""
    return f"#{r.rank} {short(r.item.title)}\nscore {r.score:.2f}{new}\n{short(r.reason, 60)}"


def item_json(view: Any) -> dict:
    """An item as the API returns it."""
    return {"id": view.id, "title": view.title, "meta": view.meta, "is_new": bool(view.is_new),
            "has_image": bool(view.image)}


def rec_json(r: Any) -> dict:
    """A ranked result as the API returns it."""
    return {**item_json(r.item), "rank": int(r.rank), "score": round(float(r.score), 6),
            "reason": r.reason, "reason_id": r.reason_id}


def parse_history(history: Any) -> list[str]:
    """Item ids from a list, a JSON list string, or a comma/space-separated string."""
    if history is None:
        return []
    if isinstance(history, str):
        s = history.strip()
        if s.startswith("["):
            try:
                history = json.loads(s)
            except json.JSONDecodeError:
                raise BadInput("The history is not valid JSON; send a list of item ids or 'id1, id2'.") from None
        else:
            return [p for p in s.replace(",", " ").split() if p]
    if not isinstance(history, (list, tuple)):
        raise BadInput("The history must be a list of item ids or a comma-separated string.")
    return [str(h).strip() for h in history if str(h).strip()]


def eval_frame(about: dict) -> pd.DataFrame:
    """The model card's evaluation table as rows of (model, split, metrics...)."""
    table = next((about[k] for k in ("results", "eval", "evaluation", "metrics") if about.get(k)), None)
    rows = []
    if isinstance(table, dict):
        for model, splits in table.items():
            if model == "meta" or not isinstance(splits, dict):  # "meta": the recipe's provenance
                continue
            for split, metrics in splits.items():
                if isinstance(metrics, dict):
                    rows.append({"model": model, "split": split,
                                 **{m: v for m, v in metrics.items() if isinstance(v, (int, float))}})
    elif isinstance(table, list):
        rows = [r for r in table if isinstance(r, dict)]
    df = pd.DataFrame(rows)
    for c in df.columns:
        if c not in ("model", "split", "n") and pd.api.types.is_float_dtype(df[c]):
            df[c] = df[c].round(4)
    return df


def metric_frame(df: pd.DataFrame, metric: str, split: str = "test") -> pd.DataFrame:
    """One metric of one split per model, for the bar plot."""
    if df.empty or metric not in df.columns:
        return pd.DataFrame({"model": [], metric or "value": []})
    sub = df[df["split"] == split] if "split" in df.columns and (df["split"] == split).any() else df
    return sub[["model", metric]].dropna().reset_index(drop=True)


def y_lim(df: pd.DataFrame, metric: str) -> list[float]:
    """Bars start at zero so that their heights compare."""
    top = float(metric_frame(df, metric)[metric].max()) if metric in df.columns else 1.0
    return [0.0, round(top * 1.15, 4) if top > 0 else 1.0]


def about_facts(about: dict) -> list[tuple[str, Any]]:
    """The facts of `Recommender.about()` a visitor may see: names, never server paths, and sizes in human units."""
    about = dict(about)
    hidden = {"results", "eval", "evaluation", "metrics", "model_card", "store_dir", "recovery"}
    if "n_uploads" in about and "max_uploads" in about:
        about["uploads"] = f"{int(about['n_uploads']):,} of {int(about['max_uploads']):,}"
        hidden |= {"n_uploads", "max_uploads"}
    if "upload_bytes" in about and "max_upload_total_bytes" in about:
        used, cap = human_bytes(about["upload_bytes"]), human_bytes(about["max_upload_total_bytes"])
        about["upload storage"] = f"{used} of {cap}"
        hidden |= {"upload_bytes", "max_upload_total_bytes"}
    out = []
    for k, v in about.items():
        if k in hidden or isinstance(v, (dict, list)):
            continue
        if k.endswith("_bytes") and isinstance(v, (int, float)):
            v = human_bytes(v)
        elif isinstance(v, str) and (os.path.isabs(v) or v.startswith("~")):
            v = Path(v).name  # a server folder or file (the weights, a model folder): its name only
        elif isinstance(v, int) and not isinstance(v, bool):
            v = f"{v:,}"
        out.append((k.replace("_", " "), v))
    return out


def about_markdown(about: dict) -> str:
    """A short description of the served model and a table of its facts."""
    facts = about_facts(about)
    lines = ["dtrec is an ID-free two-tower sequential recommender: an **item tower** encodes each "
             "item's content (poster and/or text), a **user tower** reads your history and predicts the "
             "next item's embedding, and FAISS retrieves the nearest items. Because items are known only "
             "by content, an uploaded poster is recommendable the moment it is added — no retraining.", "",
             "| | | | |", "|---|---|---|---|"]
    half = (len(facts) + 1) // 2
    for (k1, v1), right in zip(facts[:half], facts[half:] + [("", "")]):
        k2, v2 = right
        lines.append(f"| **{k1}** | `{v1}` | {f'**{k2}**' if k2 else ''} | {f'`{v2}`' if k2 else ''} |")
    return "\n".join(lines)
