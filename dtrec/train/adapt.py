"""Zero-shot adaptation of a trained checkpoint to a new catalog, with no interactions.

The adaptor tower standardises each modality's frozen features with statistics fitted on the
catalog it was trained on (`dtrec/model/adaptor.py`). A new catalog's features sit elsewhere in the
encoder's space: another mean, other spreads. UniSRec re-learns its whitening for every domain;
`adapt_checkpoint` does the training-free part of that: it refits the standardisation on the new
catalog's item features (cold items left out, as in training) and writes a checkpoint that serves,
evaluates and fine-tunes like any other. Nothing but item content is read.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dtrec.config import DUAL_TOWER_FILES, checkpoint_folder
from dtrec.data.catalog import Dataset
from dtrec.features import load_features
from dtrec.model.tower import DualTower
from dtrec.provenance import git_commit

ADAPT_RECORD = "adapt.json"


def adapt_checkpoint(checkpoint: str | Path, data_dir: str | Path, out: str | Path,
                     encoder: str | None = None) -> dict[str, Any]:
    """Write to `out` the checkpoint at `checkpoint` with its feature standardisation refitted on
    `data_dir`'s items; returns the record also saved as `out/adapt.json`."""
    source = checkpoint_folder(checkpoint, DUAL_TOWER_FILES)
    model = DualTower.from_pretrained(str(source))
    if model.config.tower != "adaptor":
        raise ValueError(f"{source} has the {model.config.tower!r} tower, which keeps no feature statistics: "
                         "only adaptor checkpoints can be adapted to a catalog")
    dataset = Dataset.load(data_dir)
    features = load_features(data_dir, encoder or model.config.encoder, dataset.catalog)
    model.check_features(features)
    cold = list(dataset.cold_items)
    warm = torch.ones(len(features), dtype=torch.bool)
    warm[torch.as_tensor(cold, dtype=torch.long)] = False
    fitted = {m: int((features.present[m].cpu() & warm).sum()) for m in model.modalities}
    if all(n < 2 for n in fitted.values()):  # FeatureNorm.fit needs two rows to change anything
        raise ValueError(f"no item of {data_dir} has any of the modalities {', '.join(model.modalities)}: "
                         "nothing to fit the standardisation on")
    model.fit_feature_norm(features, exclude=cold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    record = {
        "adapted_from": str(source),
        "data": str(data_dir),
        "encoder": features.encoder,
        "items_fitted": fitted,
        "cold_items_left_out": len(cold),
        "git_commit": git_commit(),  # the key train_config.json uses
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / ADAPT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record
