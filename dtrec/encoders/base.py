"""The frozen-encoder interface, its errors, and the helpers every encoder shares.

An encoder turns item content into one vector per modality. It is frozen
(eval mode, no gradients, no dropout), so the same input always gives the same
vector, and it hands back float32 CPU tensors whatever device it runs on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar, runtime_checkable

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


T = TypeVar("T")
R = TypeVar("R")
_POOL_THREAD = "dtrec-pil"
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (threads, pool)
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads (nor its lock's owner)
    os.register_at_fork(after_in_child=_forget_pool)


def thread_map(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """`[fn(x) for x in items]` on up to torch.get_num_threads() threads, for work that releases the GIL."""
    global _pool
    n = min(len(items), torch.get_num_threads())
    # inline when called from one of our own workers: waiting on the pool from inside it could deadlock
    if n <= 1 or threading.current_thread().name.startswith(_POOL_THREAD):
        return [fn(x) for x in items]
    with _pool_lock:
        if _pool is None or _pool[0] < n:
            # a replaced pool is dropped, not shut down: another caller may still be mapping on it
            _pool = (n, ThreadPoolExecutor(n, thread_name_prefix=_POOL_THREAD))
        pool = _pool[1]
    return list(pool.map(fn, items))


def one_thread_per_core(fn: Callable[[T], R], shards: list[T]) -> list[R]:
    """`[fn(s) for s in shards]`, each shard on its own thread running torch with one intra-op thread.

    Rows split across cores where an op splits poorly within: MiniLM's small matrix products on
    chunks of 8 texts use a second thread less well inside each product than on a chunk of its
    own, so two one-thread workers on disjoint chunks encode text faster (docs/performance.md,
    `python scripts/bench_extract.py`). Lite0's convolutions already
    scale across threads, so images gain nothing and are not split. Up to torch.get_num_threads()
    workers; inline when that is 1 or there is one shard. Each worker runs under inference mode
    (grad mode is per thread).
    """
    workers = min(len(shards), torch.get_num_threads())
    if workers <= 1:
        with torch.inference_mode():
            return [fn(s) for s in shards]

    def run(shard: T) -> R:
        # per thread: the caller's own threads keep their setting
        torch.set_num_threads(1)
        with torch.inference_mode():
            return fn(shard)

    # a pool per call: its threads are ours alone, so their one-thread setting never leaks to other work
    with ThreadPoolExecutor(workers, thread_name_prefix=_POOL_THREAD) as pool:
        return list(pool.map(run, shards))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads in this thread, then restore the caller's count.

    One short query gains nothing from a second thread, and on a busy machine the threads wait on
    each other (a single search's encoding took 500 ms with two). The count is per thread with
    OpenMP, so concurrent requests on other threads keep theirs.
    """
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def balanced_shards(costs: list[float], n: int) -> list[list[int]]:
    """Indices of `costs` dealt into at most `n` non-empty groups of near-equal total cost (longest first)."""
    groups: list[list[int]] = [[] for _ in range(max(1, min(n, len(costs))))]
    totals = [0.0] * len(groups)
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        g = totals.index(min(totals))
        groups[g].append(i)
        totals[g] += costs[i]
    return [sorted(g) for g in groups if g]


def images_to_tensor(images: list[Image.Image], size: int, mean: tuple[float, ...],
                     std: tuple[float, ...]) -> torch.Tensor:
    """(B, 3, size, size) float32 channels_last batch: RGB, resized and centre-cropped, normalised by mean/std."""
    import numpy as np

    # PIL converts and resamples without holding the GIL: all cores work on it, not one
    arr = np.stack(thread_map(lambda im: np.asarray(resize_center_crop(to_rgb(im), size), dtype=np.uint8), images))
    # Normalised in the pixels' own HWC order, then viewed as (B, 3, H, W) with channels_last strides:
    # one contiguous float conversion, and no transposed copy (the image models run NHWC anyway).
    x = torch.from_numpy(arr).float()
    scale = [1.0 / (255.0 * s) for s in std]
    shift = [m / s for m, s in zip(mean, std)]
    if len(set(scale)) == 1 and len(set(shift)) == 1:
        x.mul_(scale[0]).sub_(shift[0])  # a scalar op runs ~5x faster than a broadcast over 3 channels
    else:
        x.mul_(torch.tensor(scale)).sub_(torch.tensor(shift))
    return x.permute(0, 3, 1, 2)
