"""The frozen-encoder interface, its errors, and the helpers every encoder shares.

An encoder turns item content into one vector per modality. It is frozen
(eval mode, no gradients, no dropout), so the same input always gives the same
vector, and it hands back float32 CPU tensors whatever device it runs on.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from PIL import Image, ImageOps


class EncoderNotFound(ValueError):
    """An encoder name that the registry does not know."""


class WeightsNotFound(FileNotFoundError):
    """An encoder whose weights are not on this machine; the message says how to get them."""


@runtime_checkable
class Encoder(Protocol):
    """A frozen content encoder: `dims` has one entry per modality it encodes ("text", "image")."""

    name: str
    dims: dict[str, int]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B, dims["text"]) float32 CPU tensor."""
        ...

    def encode_image(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, dims["image"]) float32 CPU tensor."""
        ...


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch.device; None picks CUDA when available, else CPU."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available on this machine")
    return dev


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of any PIL image: first frame of animations, EXIF rotation applied, alpha over white."""
    if getattr(image, "is_animated", False):
        image.seek(0)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not cost us the picture
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: PIL's convert("RGB") clips these, so rescale to 8 bits first
        import numpy as np

        a = np.asarray(image, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        image = Image.fromarray(a.astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` (bicubic), then cut the central `size` x `size` square."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def images_to_tensor(images: list[Image.Image], size: int, mean: tuple[float, ...],
                     std: tuple[float, ...]) -> torch.Tensor:
    """(B, 3, size, size) float32 batch: RGB, resized and centre-cropped, normalised by mean/std."""
    import numpy as np

    arr = np.stack([np.asarray(resize_center_crop(to_rgb(im), size), dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s
