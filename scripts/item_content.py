"""How much of the frozen encoders' content an item tower keeps, on a prepared catalog.

usage: python scripts/item_content.py --checkpoint RUN/dtrec --data DIR [--out FILE.json]

- own-text hit@10: an item's text alone, as a text-only item through the item tower, finds that item
  (all its modalities) in its top 10 among the catalog; the yardstick is the raw text features among
  the catalog's raw text features (ties counted against the item);
- the same over the data set's cold-start items only, when it has some: held out of all training, the
  item views included, they show whether the tower learnt to keep content or only these items';
- the item embeddings' mean pairwise cosine (a cone when near 1).
Cross-modal alignment (text-only -> image-only retrieval) is `scripts/alignment.py`'s. Prints the numbers as JSON and writes them with provenance to `--out` when given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

from dtrec.config import checkpoint_folder
from dtrec.features import Features
from dtrec.model import DualTower
from dtrec.provenance import git_commit
from dtrec.train.finetune import load_dataset_features
from dtrec.weights import resolve_checkpoint


def hit_at_10(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of rows whose target scores within the top 10 (ties counted against it)."""
    own = scores[torch.arange(len(targets)), targets].unsqueeze(1)
    return float(((scores >= own).sum(1) <= 10).float().mean())


def only(features: Features, keep: str) -> Features:
    """The same items with every modality but `keep` absent."""
    return Features(features.encoder, {m: (v if m == keep else torch.zeros_like(v)) for m, v in features.values.items()},
                    {m: (p if m == keep else torch.zeros_like(p)) for m, p in features.present.items()})


@torch.no_grad()
def item_content(model: DualTower, features: Features, cold: list[int] | None = None) -> dict[str, float | int]:
    """Own-text hit@10 through the item tower and of the raw text features (also over the `cold` items alone,
    each still searched for among the whole catalog), and the mean pairwise cosine."""
    model = model.float().eval()
    feats = Features(features.encoder, {m: v.float() for m, v in features.values.items()}, features.present)
    emb = model.item_embeddings(feats)
    n = emb.shape[0]
    cos = emb @ emb.T
    out: dict[str, float | int] = {"n_items": n,
                                   "item_mean_pairwise_cosine": float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))}
    has_text = feats.present["text"].bool()
    own = torch.arange(n)[has_text]
    text_only = model.item_embeddings(only(feats, "text"))
    out["own_text_hit@10_item_tower"] = hit_at_10(text_only[own] @ emb.T, own)
    raw = torch.nn.functional.normalize(feats.values["text"], dim=-1)
    out["own_text_hit@10_raw_text"] = hit_at_10(raw[own] @ raw[has_text].T, torch.arange(len(own)))
    if cold:
        rows = torch.tensor([i for i in cold if bool(has_text[i])], dtype=torch.long)
        # the raw yardstick searches among the items with a text; a row's place there is its rank among them
        place = torch.cumsum(has_text.long(), 0) - 1
        out["cold_items"] = len(rows)
        out["cold_own_text_hit@10_item_tower"] = hit_at_10(text_only[rows] @ emb.T, rows)
        out["cold_own_text_hit@10_raw_text"] = hit_at_10(raw[rows] @ raw[has_text].T, place[rows])
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="DualTower folder, a training run (its best/), or `pretrained`: the shipped model")
    p.add_argument("--data", required=True, help="prepared data set with the checkpoint's encoder's features")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    folder = checkpoint_folder(resolve_checkpoint(args.checkpoint), ("config.json", "model.safetensors"))
    model = DualTower.from_pretrained(str(folder))
    dataset, features = load_dataset_features(args.data, model.config.encoder)
    out: dict = item_content(model, features.select(model.modalities), dataset.cold_items)
    print(json.dumps(out, indent=2))
    if args.out:
        out["provenance"] = {"commit": git_commit(),
                             "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "command": "python scripts/item_content.py " + " ".join(argv or sys.argv[1:])}
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
