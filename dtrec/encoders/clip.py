"""open_clip encoders: `clip:<model>[:<pretrained tag or local file>]` and the random `tiny-clip` for tests.

`clip:<model>:random` builds the architecture with random weights: for speed
measurements only (its features mean nothing).

Weights come from a local file, a `local-dir:` folder, or the local Hugging
Face cache of a pretrained tag. A tag that is not cached is downloaded only
when the Hub is online (HF_HUB_OFFLINE unset); otherwise the encoder fails with
one sentence saying how to provide the weights. Both modalities are
L2-normalised, as CLIP compares them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from dtrec.encoders.base import EncoderNotFound, WeightsNotFound, resolve_device, to_rgb
from dtrec.encoders.registry import register, register_alias

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")
# `clip:<model>:random`: random weights, for timing a model whose weights are not at hand (the benchmarks on a GPU)
RANDOM_SPEC = "random"


class ClipEncoder:
    """A frozen open_clip model: `encode_text` / `encode_image` give unit vectors of size `embed_dim`."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                 preprocess: Callable[[Image.Image], torch.Tensor], embed_dim: int, name: str,
                 device: torch.device):
        self.name = name
        self.device = device
        self.dims = {"text": int(embed_dim), "image": int(embed_dim)}
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B, D) L2-normalised text features (text longer than the context is truncated)."""
        if not texts:
            return torch.zeros(0, self.dims["text"])
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float().cpu()

    @torch.inference_mode()
    def encode_image(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, D) L2-normalised image features."""
        if not images:
            return torch.zeros(0, self.dims["image"])
        x = torch.stack([self.preprocess(to_rgb(im)) for im in images]).to(self.device)
        return self.model.encode_image(x, normalize=True).float().cpu()


# --------------------------------------------------------------------------- weights
def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
              for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def cached_tag_file(tag_cfg: dict, cache_dir: str | None = None) -> str | None:
    """Local file holding a pretrained tag's weights when it was downloaded before, else None (no network)."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None
    if tag_cfg.get("hf_hub"):
        repo, filename = os.path.split(tag_cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        names = [filename]
        if filename == HF_WEIGHTS_NAME:
            names.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for fname in names:
            hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    if tag_cfg.get("url"):
        # where open_clip's own URL download puts files
        root = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "clip"
        local = root / os.path.basename(tag_cfg["url"])
        if local.is_file():
            return str(local)
    return None


def how_to_provide(model: str, tag: str, quick_gelu: bool = False) -> str:
    """The advice appended to every missing-weights error."""
    import open_clip

    # weights trained with QuickGELU (OpenAI's) need the -quickgelu config when given as a plain file
    file_model = f"{model}-quickgelu" if quick_gelu and open_clip.get_model_config(f"{model}-quickgelu") else model
    return (f"pass clip:{file_model}:/path/to/open_clip_model.safetensors, or run once online "
            f"(without HF_HUB_OFFLINE) to cache the {tag!r} weights")


def load_clip(model: str, spec: str = "", device: str | torch.device | None = None, name: str | None = None,
              cache_dir: str | None = None) -> ClipEncoder:
    """Build `clip:<model>:<spec>`; spec is a pretrained tag, a weights file, `random`, or empty (the default tag)."""
    import open_clip

    dev = resolve_device(device)
    name = name or f"clip:{model}" + (f":{spec}" if spec else "")
    kwargs: dict[str, Any] = {"device": dev, "precision": "fp32", "cache_dir": cache_dir}

    if model == "local-dir":
        # open_clip's own folder layout: open_clip_config.json + weights, never downloads
        if not Path(spec).is_dir():
            raise WeightsNotFound(f"no folder {spec!r} for clip:local-dir: (it needs open_clip_config.json and weights)")
        model_id, pretrained, embed_dim = f"local-dir:{spec}", None, None
    else:
        model_id = model.replace("/", "-")
        cfg = open_clip.get_model_config(model_id)
        if cfg is None:
            raise EncoderNotFound(f"unknown open_clip model {model!r} in encoder {name!r} "
                                  f"(see open_clip.list_models())")
        embed_dim = cfg["embed_dim"]
        tags = open_clip.list_pretrained_tags_by_model(model_id)
        default_tag = "openai" if "openai" in tags else (tags[0] if tags else "")
        if not spec:
            if not default_tag:
                raise WeightsNotFound(f"open_clip model {model!r} has no pretrained tag: "
                                      f"pass clip:{model}:/path/to/open_clip_model.safetensors")
            spec = default_tag
        if spec == RANDOM_SPEC:
            pretrained = None  # the architecture at random weights: its features are noise, its speed is real
        elif spec in tags:
            tag_cfg = open_clip.get_pretrained_cfg(model_id, spec)
            kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
            kwargs["force_preprocess_cfg"] = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                              if k in tag_cfg}
            local = cached_tag_file(tag_cfg, cache_dir)
            if local is not None:
                pretrained = local  # load straight from the cache: no network round trip at all
            elif hub_offline():
                raise WeightsNotFound(f"no local weights for {name!r} and the Hub is offline: "
                                      f"{how_to_provide(model, spec, kwargs['force_quick_gelu'])}")
            else:
                pretrained = spec  # online: open_clip downloads into the Hugging Face cache
        elif Path(spec).expanduser().is_file():
            pretrained = str(Path(spec).expanduser())
        elif spec.endswith(WEIGHT_SUFFIXES) or os.sep in spec or "/" in spec:
            raise WeightsNotFound(f"weights file {spec!r} for {name!r} does not exist: "
                                  f"give the path of an existing open_clip checkpoint for {model!r}")
        else:
            raise EncoderNotFound(f"{spec!r} is neither a file nor a pretrained tag of {model!r} "
                                  f"(tags: {', '.join(tags) or 'none'})")

    try:
        clip_model, _, preprocess = open_clip.create_model_and_transforms(model_id, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError) as e:
        fix = ("check that the folder holds open_clip_config.json and its weights" if model == "local-dir"
               else how_to_provide(model, spec, bool(kwargs.get("force_quick_gelu"))))
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise WeightsNotFound(f"could not load the weights of {name!r} ({first_line}): {fix}") from e
    tokenizer = open_clip.get_tokenizer(model_id)
    if embed_dim is None:
        embed_dim = int(clip_model.text_projection.shape[1]) if getattr(clip_model, "text_projection", None) is not None \
            else int(clip_model.encode_text(tokenizer(["x"]).to(dev)).shape[1])
    return ClipEncoder(clip_model, tokenizer, preprocess, embed_dim, name, dev)


# --------------------------------------------------------------------------- tiny-clip
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_SEED = 0


def tiny_clip(device: str | torch.device | None = None, name: str = "tiny-clip") -> ClipEncoder:
    """A 2-layer, 32-d open_clip CLIP with seeded random weights and the bundled BPE tokenizer (no download)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transform import PreprocessCfg, image_transform_v2

    dev = resolve_device(device)
    # fork_rng: a fixed seed for these weights without disturbing the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_CLIP_SEED)
        model = CLIP(embed_dim=TINY_CLIP["embed_dim"], vision_cfg=CLIPVisionCfg(**TINY_CLIP["vision_cfg"]),
                     text_cfg=CLIPTextCfg(**TINY_CLIP["text_cfg"]))
    tokenizer = SimpleTokenizer(context_length=TINY_CLIP["text_cfg"]["context_length"])
    preprocess = image_transform_v2(PreprocessCfg(size=TINY_CLIP["vision_cfg"]["image_size"]), is_train=False)
    return ClipEncoder(model, tokenizer, preprocess, TINY_CLIP["embed_dim"], name, dev)


@register("clip", prefix=True)
def _clip(spec: str, device: str | torch.device | None, name: str) -> ClipEncoder:
    model, _, rest = spec.partition(":")
    if not model:
        raise EncoderNotFound(f"encoder {name!r} names no model: use clip:<open_clip model>[:<tag or file>]")
    return load_clip(model, rest, device=device, name=name)


@register("tiny-clip")
def _tiny_clip(spec: str, device: str | torch.device | None, name: str) -> ClipEncoder:
    return tiny_clip(device=device, name=name)


# The precomputed features of the UniSRec/MISSRec data are CLIP ViT-B/32 (OpenAI weights);
# the live encoder keeps the alias as its name so that new items line up with them.
register_alias("clip-vit-b-32", "clip:ViT-B-32:openai")
