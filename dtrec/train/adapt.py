"""Zero-shot adaptation of a trained checkpoint to a new catalog, with no interactions.

The adaptor tower standardises each modality's frozen features with statistics fitted on the
catalog it was trained on (`dtrec/model/adaptor.py`). A new catalog's features sit elsewhere in the
encoder's space: another mean, other spreads. UniSRec re-learns its whitening for every domain;
`adapt_checkpoint` does the training-free part of that: it refits the standardisation on the new
catalog's item features (cold items left out, as in training) and writes a checkpoint that serves,
evaluates and fine-tunes like any other. Nothing but item content is read.

It can also scale the content term (`dtrec/model/content.py`). Pretraining learns that term's weights on its
sources, where the towers have learnt the items' neighbourhoods themselves, so the weights end smaller than a
catalog the towers never saw wants them: on two held-out Amazon domains, three times the learned weights ranks
better zero-shot (docs/pretraining.md, "The content term's scale on a new catalog"). The factor is a
transfer setting chosen on a catalog of its own, not on the target's interactions.
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


def content_weights(model: DualTower) -> list[float]:
    """`model`'s content-term weights, newest place first; ValueError when it has no content term."""
    if model.content_bias is None:
        raise ValueError("the checkpoint has no content term (it was trained without --content-lags): "
                         "there is nothing to scale")
    return [round(w, 6) for w in model.content_bias.values().detach().tolist()]


def scale_content_term(model: DualTower, factor: float) -> list[float]:
    """Multiply `model`'s content-term weights by `factor` in place; returns the new weights, newest place first."""
    content_weights(model)  # refuses a model without the term before the factor is looked at
    if not factor > 0:
        raise ValueError(f"the content scale must be a positive number, got {factor}")
    with torch.no_grad():
        model.content_bias.weight.mul_(factor)
    return content_weights(model)


def adapt_checkpoint(checkpoint: str | Path, data_dir: str | Path, out: str | Path,
                     encoder: str | None = None, refit_norm: bool = True,
                     content_scale: float | None = None) -> dict[str, Any]:
    """Write to `out` the checkpoint at `checkpoint` with its feature standardisation refitted on `data_dir`'s
    items (unless `refit_norm` is False) and its content term scaled by `content_scale` (when given); returns the
    record also saved as `out/adapt.json`."""
    if not refit_norm and content_scale is None:
        raise ValueError("nothing to adapt: keeping the standardisation without a content scale would copy "
                         "the checkpoint unchanged")
    source = checkpoint_folder(checkpoint, DUAL_TOWER_FILES)
    model = DualTower.from_pretrained(str(source))
    if refit_norm and model.config.tower != "adaptor":
        raise ValueError(f"{source} has the {model.config.tower!r} tower, which keeps no feature statistics: "
                         "only adaptor checkpoints can be adapted to a catalog")
    weights = None
    if content_scale is not None:
        before = content_weights(model)
        weights = {"before": before, "after": scale_content_term(model, content_scale)}
    dataset = Dataset.load(data_dir)
    features = load_features(data_dir, encoder or model.config.encoder, dataset.catalog)
    model.check_features(features)
    cold = list(dataset.cold_items)
    warm = torch.ones(len(features), dtype=torch.bool)
    warm[torch.as_tensor(cold, dtype=torch.long)] = False
    fitted = {m: int((features.present[m].cpu() & warm).sum()) for m in model.modalities}
    if refit_norm:
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
        "norm_refitted": refit_norm,
        "items_fitted": fitted if refit_norm else {},
        "cold_items_left_out": len(cold),
        "content_scale": content_scale,
        "content_weights": weights,
        "git_commit": git_commit(),  # the key train_config.json uses
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / ADAPT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record
