"""The served model's frozen encoder, built and warmed once on first use (only uploads and text search
need it), and the towers run on one item or one history, as float32 numpy."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from dtrec import encoders
from dtrec.data.catalog import item_text
from dtrec.encoders.base import torch_threads
from dtrec.features import Features


def zero_gpu(fn: Callable) -> Callable:
    """`spaces.GPU(fn)` on Hugging Face ZeroGPU (SPACES_ZERO_GPU set, `spaces` importable), else `fn`."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return fn
    try:
        import spaces  # type: ignore[import-not-found]  # only on a ZeroGPU Space
    except ImportError:
        return fn
    return spaces.GPU(fn)


def user_tower(model: Any, histories: list[list[int]], features: Features) -> np.ndarray:
    """User-tower predictions (B, d) as float32 numpy."""
    return model.user_embeddings(histories, features).float().cpu().numpy()


def item_tower(model: Any, features: Features, ids: bool = True) -> np.ndarray:
    """Item-tower embeddings (N, d) as float32 numpy; `ids` False for items that are not catalog rows 0..N-1
    (uploads: a model with item IDs scores them by content alone)."""
    return model.item_embeddings(features, ids=ids).float().cpu().numpy()


class ContentEncoder:
    """Raw features of one item's title, text and image with the model's frozen encoder, and their
    item-tower embedding.

    Callers that arrive while the encoder loads wait for it: the first call of an encoder loads its
    weights lazily (transformers' lazy imports) and configures its tokenizer, neither of which is
    safe to run from two threads at once.
    """

    def __init__(self, model: Any, device: Any, encoder_device: Any = None):
        """The encoder named by `model.config.encoder`, on `encoder_device` (default `device`)."""
        self.model = model
        self.name = model.config.encoder
        self.dims = dict(model.config.modality_dims)
        self.device = encoder_device or device
        self._encoder = None
        self._lock = threading.Lock()
        self._ready = False

    def get(self) -> Any:
        """The frozen encoder, built and warmed on the first call."""
        if self._ready:
            return self._encoder
        with self._lock:
            if self._encoder is None:
                self._encoder = encoders.get_encoder(self.name, device=self.device)
            if not self._ready:
                enc = self._encoder
                if callable(getattr(enc, "load", None)):
                    enc.load(tuple(m for m in ("text", "image") if m in self.dims))
                if "text" in self.dims:
                    enc.encode_text(["warm up"])
                if "image" in self.dims:
                    enc.encode_image([Image.new("RGB", (32, 32), (127, 127, 127))])
                self._ready = True
        return self._encoder

    def encode(self, title: str, text: str, image: Image.Image | None) -> dict[str, np.ndarray | None]:
        """Raw frozen-encoder features of one item, per model modality (None: absent)."""
        enc = self.get()
        out: dict[str, np.ndarray | None] = {m: None for m in self.dims}
        if "text" in self.dims and (title or text):
            out["text"] = enc.encode_text([item_text(title, text)])[0].float().cpu().numpy()
        if "image" in self.dims and image is not None:
            out["image"] = enc.encode_image([image])[0].float().cpu().numpy()
        return out

    def embed(self, feats: dict[str, np.ndarray | None]) -> np.ndarray:
        """Item-tower embedding (d,) of one item's raw features."""
        values = {m: torch.from_numpy(v if v is not None else np.zeros(self.dims[m], np.float32))[None]
                  for m, v in feats.items()}
        present = {m: torch.tensor([v is not None]) for m, v in feats.items()}
        return item_tower(self.model, Features(self.name, values, present), ids=False)[0]  # a new item has no ID

    def encode_and_embed(self, title: str, text: str,
                         image: Image.Image | None) -> tuple[dict[str, np.ndarray | None], np.ndarray]:
        """Raw features and item-tower embedding of one item."""
        feats = self.encode(title, text, image)
        return feats, self.embed(feats)

    def text_scores(self, query: str, features: Features) -> np.ndarray:
        """Cosine between the encoder's embedding of `query` and each row's text feature in `features`
        (-inf for rows without one), by row; the query is encoded with one torch thread (`torch_threads`)."""
        encoder = self.get()
        with torch_threads(1):
            q = encoder.encode_text([query])[0].float()
        vals, present = features.values["text"], features.present["text"]
        q = q.to(vals.device)
        cos = (vals @ q) / (vals.norm(dim=1) * q.norm()).clamp_min(1e-12)
        return torch.where(present, cos, float("-inf")).float().cpu().numpy()
