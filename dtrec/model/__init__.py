"""The dual-tower model: `FusionEncoder`, `DualTower` and the training losses."""

from dtrec.encoders.registry import same_encoder
from dtrec.model.fusion import FusionEncoder
from dtrec.model.tower import CheckpointError, DualTower, FeatureMismatchError

__all__ = ["CheckpointError", "DualTower", "FeatureMismatchError", "FusionEncoder", "same_encoder"]
