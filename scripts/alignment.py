"""Cross-modal alignment of a checkpoint's item tower on items it never trained on: text-only -> image-only retrieval.

Each item with both a text and an image is embedded twice through the item tower, once from its text alone
and once from its image alone; its text embedding then searches among the image embeddings of the others.
By default the items are the data set's cold-start items (held out of all training, pretraining included).
Beside it, chance (k / n): the frozen text and image features live in unrelated spaces of different sizes,
so without a trained tower nothing better than chance is possible.

usage: python scripts/alignment.py --checkpoint DIR --data PREPARED [--all-items] [--out docs/bench/alignment.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dtrec.config import checkpoint_folder
from dtrec.data.catalog import Dataset
from dtrec.features import load_features
from dtrec.model import DualTower
from dtrec.provenance import git_commit
from dtrec.weights import resolve_checkpoint

KS = (1, 10)


def recall_at(queries: torch.Tensor, keys: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Share of rows i whose key i is among the top k keys of query i, by cosine."""
    sims = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T
    rank = (sims > sims.diagonal().unsqueeze(1)).sum(1)  # keys scoring above the true one
    return {f"recall@{k}": float((rank < k).float().mean()) for k in ks}


def main(argv: list[str] | None = None) -> int:
    """Measure and report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--all-items", action="store_true", help="every item with both modalities, not the cold ones")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    model = DualTower.from_pretrained(str(checkpoint_folder(resolve_checkpoint(args.checkpoint)))).float().eval()
    ds = Dataset.load(args.data)
    feats = load_features(args.data, model.config.encoder, ds.catalog)
    both = feats.present["text"] & feats.present["image"]
    rows = torch.arange(len(feats)) if args.all_items else torch.as_tensor(sorted(ds.cold_items), dtype=torch.long)
    rows = rows[both[rows]] if len(rows) else rows
    if len(rows) < 2:
        print("fewer than two items with both a text and an image to align", file=sys.stderr)
        return 2
    sub = feats.subset(rows)
    only = {m: {k: sub.present[k] & (k == m) for k in sub.modalities} for m in ("text", "image")}
    with torch.no_grad():
        t = model.encode_items(sub.values, only["text"])
        v = model.encode_items(sub.values, only["image"])
    out = {
        "checkpoint": args.checkpoint, "data": str(Path(args.data).resolve()),
        "items": "all with both modalities" if args.all_items else "cold-start items (never trained on)",
        "n": len(rows),
        "text_to_image": recall_at(t, v), "image_to_text": recall_at(v, t),
        "chance": {f"recall@{k}": min(k / len(rows), 1.0) for k in KS},
        "meta": {"commit": git_commit(Path(__file__).resolve().parents[1]),
                 "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": "python scripts/alignment.py " + " ".join(argv or sys.argv[1:])},
    }
    print(json.dumps({k: out[k] for k in ("n", "text_to_image", "image_to_text", "chance")}))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
