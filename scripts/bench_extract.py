"""A/B speed of the offline encoder: this work tree against a git revision, interleaved in one process.

    python scripts/bench_extract.py                 # vs HEAD, 3 rounds of measure_feature_extraction
    python scripts/bench_extract.py --rev main~3 --rounds 5 --n-items 64
    python scripts/bench_extract.py --breakdown     # ms per item: decode, preprocess, image model, text model
    python scripts/bench_extract.py --fused-ab      # Lite0 with fused oneDNN conv+ReLU6 vs conv, clamp

On a shared machine a single run says little: old and new alternate round by round, so that
both see the same noise, and the medians are compared. Only `dtrec/encoders/offline.py` and
`dtrec/encoders/base.py` are taken from the revision; everything else (extract, the catalog) is
the work tree's.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

from benchmarks.data import synthetic_jpeg
from benchmarks.features import measure_feature_extraction
from dtrec.encoders import register


def _module_at(rev: str, path: str, name: str, replace: dict[str, str]) -> types.ModuleType:
    """Import `path` as it is at git revision `rev`, under the module name `name`."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout
    for old, new in replace.items():
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def register_baseline(rev: str) -> str:
    """Register the offline encoder of `rev` as `offline@<rev>` and return that name."""
    name = f"offline@{rev}"
    _module_at(rev, "dtrec/encoders/base.py", "_bench_base", {})
    old = _module_at(rev, "dtrec/encoders/offline.py", "_bench_offline",
                     {"from dtrec.encoders.base import": "from _bench_base import",
                      '@register("offline")': "def _unregistered(f): return f\n@_unregistered"})
    register(name)(lambda spec, device, label: old.OfflineEncoder(device=device, name=label))
    return name


def ab(rev: str, rounds: int, n_items: int) -> None:
    """Alternate measure_feature_extraction on the baseline and on the work tree; print medians."""
    names = {"old": register_baseline(rev), "new": "offline"}
    keys = ("text_items_per_s", "image_items_per_s", "both_items_per_s")
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(rounds):
        for label in (("old", "new") if r % 2 == 0 else ("new", "old")):
            out = measure_feature_extraction(names[label], n_items=n_items, device="cpu")
            runs[label].append(out)
            print(f"round {r} {label}: " + "  ".join(f"{k.split('_')[0]} {out[k]:6.1f}" for k in keys), flush=True)
    print(f"\nitems/s, median of {rounds} (min..max); threads={torch.get_num_threads()}, n_items={n_items}")
    for k in keys:
        row = []
        for label in ("old", "new"):
            v = [o[k] for o in runs[label]]
            row.append(f"{label} {statistics.median(v):6.1f} ({min(v):.1f}..{max(v):.1f})")
        ratio = statistics.median(o[k] for o in runs["new"]) / statistics.median(o[k] for o in runs["old"])
        print(f"  {k.split('_')[0]:5s} " + "   ".join(row) + f"   x{ratio:.2f}")


def breakdown(n_items: int, rounds: int) -> None:
    """Median ms per item of each stage of the work tree's offline encoder, at extract's batch of 32."""
    from PIL import Image

    from dtrec.encoders import get_encoder, offline
    from dtrec.encoders.base import images_to_tensor, thread_map, to_rgb

    enc = get_encoder("offline", device="cpu")
    assert isinstance(enc, offline.OfflineEncoder)
    enc.load()
    blobs = [synthetic_jpeg(300, 450, seed=i) for i in range(n_items)]
    words = "lab scope precise steel glass sensor digital kit pipette flask gauge meter".split()
    texts = [f"Item {i} " + " ".join(words[(i * 7 + j) % len(words)] for j in range(8 + i % 33)) for i in range(n_items)]

    def open_one(blob: bytes) -> Image.Image:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            return to_rgb(im)

    def preprocess(images: list[Image.Image]) -> torch.Tensor:
        return images_to_tensor(images, offline.IMAGE_SIZE, offline.IMAGE_MEAN, offline.IMAGE_STD)

    images = thread_map(open_one, blobs)
    x = preprocess(images)

    @torch.inference_mode()
    def image_model() -> None:
        for lo in range(0, n_items, 32):  # extract's batch, split by the encoder as it does it
            enc._image_model(x[lo:lo + 32], offline.IMAGE_HIGH_RES_BATCH, offline.IMAGE_LOW_RES_BATCH)

    stages = {
        "decode (JPEG 300x450 + to_rgb)": lambda: thread_map(open_one, blobs),
        "preprocess (resize, crop, tensor)": lambda: [preprocess(images[lo:lo + 32]) for lo in range(0, n_items, 32)],
        "image model": image_model,
        "text (tokenize + model)": lambda: [enc.encode_text(texts[lo:lo + 32]) for lo in range(0, n_items, 32)],
    }
    times: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(rounds):
        for k, f in stages.items():
            t = time.perf_counter()
            f()
            times[k].append(1000 * (time.perf_counter() - t) / n_items)
    total = 0.0
    for k, v in times.items():
        total += statistics.median(v)
        print(f"  {k:36s} {statistics.median(v):6.2f} ms/item (min {min(v):.2f})")
    print(f"  {'sum':36s} {total:6.2f} ms/item = {1000 / total:.1f} items/s with text and image")


def fused_ab(rounds: int) -> None:
    """Median ms per image of the folded Lite0 with and without fused CPU convs, interleaved, batch 32."""
    from dtrec.encoders import offline

    plain = offline.load_efficientnet_lite0(offline.efficientnet_lite0_file())
    models = {"conv, clamp": offline.fold_efficientnet_lite(plain, fused=False),
              "fused": offline.fold_efficientnet_lite(plain)}
    x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x, offline.IMAGE_HIGH_RES_BATCH, offline.IMAGE_LOW_RES_BATCH)  # warm-up (and the weight reorder)
        for r in range(rounds):
            for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
                t = time.perf_counter()
                models[k](x, offline.IMAGE_HIGH_RES_BATCH, offline.IMAGE_LOW_RES_BATCH)
                times[k].append(1000 * (time.perf_counter() - t) / len(x))
    a, b = (statistics.median(times[k]) for k in models)
    wins = sum(u > f for u, f in zip(*times.values()))
    print(f"Lite0 ms/image, median of {rounds}: conv, clamp {a:.2f}; fused {b:.2f}; x{a / b:.3f} "
          f"(fused faster in {wins} of {rounds} rounds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="HEAD", help="git revision of the baseline encoder (default HEAD)")
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (12 with --fused-ab)")
    ap.add_argument("--n-items", type=int, default=64)
    ap.add_argument("--breakdown", action="store_true", help="per-stage ms/item of the work tree only")
    ap.add_argument("--fused-ab", action="store_true", help="Lite0 with and without fused CPU convs")
    args = ap.parse_args()
    if args.fused_ab:
        fused_ab(args.rounds or 12)
    elif args.breakdown:
        breakdown(args.n_items, args.rounds or 3)
    else:
        ab(args.rev, args.rounds or 3, args.n_items)


if __name__ == "__main__":
    main()
