"""Where a checkpoint loses to content kNN on a catalog: the item tower's neighbourhoods or the user tower's read-out.

On the test split (full ranking, nothing hidden) it scores four rankings:

- `model`: the checkpoint as `dtrec evaluate` scores it;
- `knn_features`: content kNN, the frozen features' cosine to the last history item (the baseline);
- `knn_item_tower`: the same cosine, but between the checkpoint's item embeddings: what the item tower keeps of
  the features' neighbourhoods, with the user tower left out;
- `user_plus_last`: the user tower's prediction plus the last item's embedding (weight 1), no repeat term:
  whether the user tower merely under-weights the last item.

Beside them, `neighbour_overlap`: the share of each item's 10 nearest neighbours by the frozen features that are
also among its 10 nearest by the item tower (over a fixed sample of up to 2,000 items).

`--untrained SEED` is the control: the checkpoint's architecture freshly initialised with SEED, its feature
standardisation fitted on this catalog (as `dtrec adapt` does), no training at all.

usage: python scripts/zero_shot_diagnosis.py --checkpoint DIR --data PREPARED [--untrained SEED] [--out X.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dtrec.baselines.knn import item_vectors
from dtrec.config import checkpoint_folder
from dtrec.weights import resolve_checkpoint
from dtrec.data.catalog import Dataset
from dtrec.eval import evaluate
from dtrec.features import load_features
from dtrec.model import DualTower
from dtrec.provenance import git_commit

METRICS = ("ndcg@10", "recall@50", "last_item_first")


def neighbour_overlap(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, k: int = 10) -> float:
    """Mean share of row r's k nearest neighbours by cosine in `a` that are also among its k nearest in `b`."""
    def nearest(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        sims = x[rows] @ x.T
        sims[torch.arange(len(rows)), rows] = -float("inf")  # an item is not its own neighbour
        return sims.topk(k, dim=1).indices

    na, nb = nearest(a), nearest(b)
    shared = (na.unsqueeze(2) == nb.unsqueeze(1)).any(dim=2).sum()
    return float(shared) / (k * len(rows))


def main(argv: list[str] | None = None) -> int:
    """Measure and report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--untrained", type=int, default=None, metavar="SEED",
                   help="score the checkpoint's architecture freshly initialised with SEED instead of its weights")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    model = DualTower.from_pretrained(str(checkpoint_folder(resolve_checkpoint(args.checkpoint)))).float().eval()
    ds = Dataset.load(args.data)
    feats = load_features(args.data, model.config.encoder, ds.catalog)
    if args.untrained is not None:
        torch.manual_seed(args.untrained)
        model = DualTower(model.config).float().eval()
        model.fit_feature_norm(feats, exclude=list(ds.cold_items))
    items = model.item_embeddings(feats)
    raw = item_vectors(feats)
    cases = list(ds.eval_cases("test"))
    if not cases:
        print(f"{args.data} has no test cases to score", file=sys.stderr)
        return 2

    def last(histories: list[list[int]]) -> torch.Tensor:
        return torch.tensor([h[-1] for h in histories], dtype=torch.long)

    rankings = {
        "model": lambda hs: model.scores(hs, feats, items),
        "knn_features": lambda hs: raw[last(hs)] @ raw.T,
        "knn_item_tower": lambda hs: items[last(hs)] @ items.T,
        "user_plus_last": lambda hs: F.normalize(model.user_embeddings(hs, feats) + items[last(hs)], dim=-1) @ items.T,
    }
    results = {}
    for name, fn in rankings.items():
        r = evaluate(fn, cases, batch_size=512, progress=None, desc=name)
        results[name] = {k: r[k] for k in METRICS}
    sample = torch.arange(0, len(feats), max(1, len(feats) // 2000))
    out = {
        "checkpoint": args.checkpoint, "untrained_seed": args.untrained, "data": str(Path(args.data).resolve()), "split": "test",
        "protocol": "reference", "n": len(cases), "rankings": results,
        "neighbour_overlap@10": neighbour_overlap(raw, items, sample), "overlap_sample": len(sample),
        "meta": {"commit": git_commit(Path(__file__).resolve().parents[1]),
                 "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": "python scripts/zero_shot_diagnosis.py " + " ".join(argv or sys.argv[1:])},
    }
    print(json.dumps({k: out[k] for k in ("n", "rankings", "neighbour_overlap@10")}))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
