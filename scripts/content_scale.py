"""Choose the content term's scale for catalogs a pretrained checkpoint never saw, on a calibration catalog.

Pretraining learns the content term's weights (`dtrec/model/content.py`) on its sources, where the towers know
the items; a new catalog wants them larger (docs/pretraining.md, "The content term's scale on a new catalog").
This recipe scores the checkpoint zero-shot on a calibration catalog (one that is neither a pretraining source
nor the catalog to be reported), on its validation split, full ranking, for each factor of `--scales`, with the
checkpoint's own feature standardisation and with it refitted on the catalog (`dtrec adapt`), beside content kNN
on the same split; it names the best setting by validation NDCG@10. Apply it to any new catalog with

    dtrec adapt --checkpoint CKPT --data NEW --content-scale FACTOR [--keep-norm] --out ADAPTED

usage: python scripts/content_scale.py --checkpoint pretrained --data CALIBRATION [--scales 1,2,3] [--out X.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
from pathlib import Path

from dtrec.baselines.knn import ContentKNN, ContentKNNConfig
from dtrec.config import checkpoint_folder
from dtrec.data.catalog import Dataset
from dtrec.eval import evaluate
from dtrec.features import load_features
from dtrec.model import DualTower
from dtrec.provenance import git_commit
from dtrec.scoring import dual_tower_score_fn
from dtrec.train.adapt import scale_content_term
from dtrec.weights import resolve_checkpoint

METRICS = ("ndcg@10", "recall@10", "recall@50", "mrr")


def main(argv: list[str] | None = None) -> int:
    """Measure every setting and name the best."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="pretrained", help="checkpoint with a content term (default: the shipped)")
    p.add_argument("--data", required=True, help="prepared calibration catalog with the checkpoint's features")
    p.add_argument("--scales", default="1,1.5,2,3,4,6", help="comma-separated factors to try (default: %(default)s)")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--out", default=None, help="write every row and the choice as JSON here")
    args = p.parse_args(argv)
    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        p.error(f"--scales takes comma-separated numbers, got {args.scales!r}")
    if not all(s > 0 for s in scales):
        p.error(f"--scales takes positive factors, got {args.scales!r}")
    folder = checkpoint_folder(resolve_checkpoint(args.checkpoint))
    ds = Dataset.load(args.data)
    cases = list(ds.eval_cases(args.split))
    if not cases:
        print(f"{args.data} has no {args.split} cases to score", file=sys.stderr)
        return 2
    base = DualTower.from_pretrained(str(folder)).float().eval()
    config = base.config
    if not config.content_lags:
        print(f"{args.checkpoint} has no content term (trained without --content-lags): nothing to scale",
              file=sys.stderr)
        return 2
    features = load_features(args.data, config.encoder, ds.catalog)
    rows = []
    for refit in (False, True):
        for scale in scales:
            model = copy.deepcopy(base)  # every setting starts from the checkpoint as saved
            if refit:
                model.fit_feature_norm(features, exclude=list(ds.cold_items))
            weights = scale_content_term(model, scale)
            r = evaluate(dual_tower_score_fn(model, features), cases, batch_size=512, desc=f"x{scale:g}")
            rows.append({"refit_norm": refit, "content_scale": scale, "content_weights": weights,
                         **{k: r[k] for k in METRICS}})
            print(json.dumps(rows[-1]), flush=True)
    knn = evaluate(ContentKNN(ContentKNNConfig(features.encoder), features).scores, cases, batch_size=512)
    best = max(rows, key=lambda r: r["ndcg@10"])
    out = {
        "checkpoint": args.checkpoint, "data": str(Path(args.data).resolve()), "split": args.split,
        "protocol": "reference", "n": len(cases), "rows": rows, "content_knn": {k: knn[k] for k in METRICS},
        "choice": {"content_scale": best["content_scale"], "keep_norm": not best["refit_norm"],
                   "by": f"{args.split} ndcg@10"},
        "meta": {"commit": git_commit(Path(__file__).resolve().parents[1]),
                 "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": "python scripts/content_scale.py " + " ".join(argv or sys.argv[1:])},
    }
    keep = " --keep-norm" if out["choice"]["keep_norm"] else ""
    print(f"content kNN: ndcg@10 {knn['ndcg@10']:.4f}, recall@50 {knn['recall@50']:.4f}; best: "
          f"x{best['content_scale']:g}{', standardisation refitted' if best['refit_norm'] else ''} "
          f"(ndcg@10 {best['ndcg@10']:.4f}, recall@50 {best['recall@50']:.4f}); for a new catalog: dtrec adapt "
          f"--checkpoint {args.checkpoint} --data NEW --content-scale {best['content_scale']:g}{keep} --out ADAPTED")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
