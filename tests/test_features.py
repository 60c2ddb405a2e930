"""Feature extraction: presence masks, the on-disk cache, invalidation, resuming, `dtrec extract`."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

import dtrec.encoders
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.features import Features, cache_path, extract, load_features


def _write_images(root: Path) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 60), (220, 20, 20)).save(root / "images" / "a.png")
    Image.new("RGB", (64, 64), (20, 200, 20)).save(root / "images" / "c.png")
    Image.new("CMYK", (30, 30), (200, 0, 0, 0)).save(root / "images" / "e.jpg")
    (root / "images" / "d.png").write_bytes(b"this is not a png")


def make_dataset(root: Path) -> Dataset:
    """Six items covering every modality case, saved in the prepared layout under `root`."""
    _write_images(root)
    items = [
        Item("a", "Red Movie (1990)", "Drama", "images/a.png"),   # text + image
        Item("b", "Text Only (1991)", "Comedy", None),            # text only
        Item("c", "", "", "images/c.png"),                        # image only
        Item("d", "Broken Poster (1992)", "", "images/d.png"),    # unreadable image
        Item("e", "Print Colours (1993)", "", "images/e.jpg"),    # CMYK image
        Item("f", "Lost Poster (1994)", "", "images/gone.png"),   # image file missing
    ]
    ds = Dataset(Catalog(items, root=root), Interactions(["u1", "u2"], [[0, 1, 2, 3], [4, 5, 0]]), name="tiny")
    ds.save(root)
    return ds


class CountingEncoder:
    """Wraps an encoder and counts what it is asked to encode."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.name, self.dims = inner, inner.name, inner.dims
        self.text_calls = self.image_calls = self.texts = 0
        self.fail_after = fail_after

    def encode_text(self, texts):
        self.text_calls += 1
        self.texts += len(texts)
        if self.fail_after is not None and self.text_calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        return self.inner.encode_text(texts)

    def encode_image(self, images):
        self.image_calls += 1
        return self.inner.encode_image(images)


@pytest.fixture(scope="module")
def tiny():
    return dtrec.encoders.get_encoder("tiny-clip", device="cpu")


@pytest.fixture
def counted(monkeypatch, tiny):
    """get_encoder patched to hand out counting wrappers around tiny-clip; the list records each build."""
    built: list[CountingEncoder] = []

    def fake(name, device=None):
        assert name == "tiny-clip"
        built.append(CountingEncoder(tiny))
        return built[-1]

    monkeypatch.setattr(dtrec.encoders, "get_encoder", fake)
    return built


def _extract(ds, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        feats = extract(ds, "tiny-clip", progress=False, **kw)
    return feats, [str(x.message) for x in w]


def test_presence_masks_and_zero_rows(tmp_path, tiny):
    ds = make_dataset(tmp_path)
    feats, warned = _extract(ds, batch_size=4)
    assert feats.encoder == "tiny-clip" and feats.dims == {"text": 32, "image": 32} and len(feats) == 6
    assert feats.present["text"].tolist() == [True, True, False, True, True, True]
    assert feats.present["image"].tolist() == [True, False, True, False, True, False]
    assert any("'d'" in m and "unreadable" in m for m in warned)
    assert any("'f'" in m for m in warned)
    for m in ("text", "image"):
        norms = feats.values[m].norm(dim=-1)
        assert torch.allclose(norms[feats.present[m]], torch.ones(int(feats.present[m].sum())), atol=1e-5)
        assert (norms[~feats.present[m]] == 0).all()
    # rows are what the encoder gives for that item alone: batching changes nothing
    texts = ds.catalog.texts()
    assert torch.allclose(feats.values["text"][1], tiny.encode_text([texts[1]])[0], atol=1e-5)
    with Image.open(tmp_path / "images" / "e.jpg") as im:
        assert torch.allclose(feats.values["image"][4], tiny.encode_image([im])[0], atol=1e-5)
    one_batch, _ = _extract(ds, batch_size=64, force=True)
    for m in ("text", "image"):
        assert torch.allclose(one_batch.values[m], feats.values[m], atol=1e-5)


def test_cache_hit_does_no_encoding(tmp_path, counted):
    ds = make_dataset(tmp_path)
    first, _ = _extract(ds, batch_size=2)
    assert len(counted) == 1 and counted[0].texts == 5
    path = cache_path(tmp_path, "tiny-clip")
    stamp = path.stat().st_mtime_ns
    stats: dict = {}
    second, _ = _extract(Dataset.load(tmp_path), batch_size=2, stats=stats)
    assert len(counted) == 1, "a valid cache must not even build the encoder"
    assert stats["cached"] and path.stat().st_mtime_ns == stamp
    assert torch.equal(second.values["text"], first.values["text"])
    assert torch.equal(second.present["image"], first.present["image"])
    loaded = load_features(tmp_path, "tiny-clip")
    assert loaded.fingerprint == ds.catalog.fingerprint() and torch.equal(loaded.values["image"], first.values["image"])
    _extract(ds, force=True)
    assert len(counted) == 2 and counted[1].texts == 5


def test_changed_text_or_image_invalidates(tmp_path, counted):
    ds = make_dataset(tmp_path)
    before, _ = _extract(ds)
    ds.catalog.items[1].text = "Horror"
    ds.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="stale.*dtrec extract"):
        load_features(tmp_path, "tiny-clip")
    after, _ = _extract(Dataset.load(tmp_path))
    assert len(counted) == 2
    assert not torch.allclose(after.values["text"][1], before.values["text"][1])
    assert torch.allclose(after.values["text"][0], before.values["text"][0], atol=1e-6)
    assert load_features(tmp_path, "tiny-clip").fingerprint == after.fingerprint

    Image.new("RGB", (64, 64), (0, 0, 250)).save(tmp_path / "images" / "c.png")  # same name, new pixels
    with pytest.raises(FileNotFoundError, match="stale"):
        load_features(tmp_path, "tiny-clip")
    _extract(Dataset.load(tmp_path))
    assert len(counted) == 3


def test_other_encoder_is_not_served(tmp_path, counted):
    ds = make_dataset(tmp_path)
    _extract(ds)
    with pytest.raises(FileNotFoundError, match="dtrec extract .* --encoder offline"):
        load_features(tmp_path, "offline")
    # a file under the right name but written by another encoder is stale, not trusted
    cache_path(tmp_path, "tiny-clip").replace(cache_path(tmp_path, "offline"))
    with pytest.raises(FileNotFoundError, match="stale"):
        load_features(tmp_path, "offline")


def test_precomputed_features_load_when_fingerprint_matches(tmp_path):
    ds = make_dataset(tmp_path)
    g = torch.Generator().manual_seed(0)
    pre = Features("clip-vit-b-32", {"text": torch.randn(6, 8, generator=g), "image": torch.randn(6, 8, generator=g)},
                   {"text": torch.ones(6, dtype=torch.bool), "image": torch.zeros(6, dtype=torch.bool)},
                   ds.catalog.fingerprint())
    pre.save(cache_path(tmp_path, "clip-vit-b-32"))
    got = load_features(tmp_path, "clip-vit-b-32")
    assert torch.equal(got.values["text"], pre.values["text"]) and not got.present["image"].any()
    Features(pre.encoder, pre.values, pre.present, "0" * 16).save(cache_path(tmp_path, "clip-vit-b-32"))
    with pytest.raises(FileNotFoundError, match="stale"):
        load_features(tmp_path, "clip-vit-b-32")


def test_interrupted_extraction_resumes(tmp_path, monkeypatch, tiny):
    ds = make_dataset(tmp_path)
    full, _ = _extract(ds, batch_size=2, cache=False)
    flaky = CountingEncoder(tiny, fail_after=2)
    monkeypatch.setattr(dtrec.encoders, "get_encoder", lambda name, device=None: flaky)
    with pytest.raises(KeyboardInterrupt):
        _extract(ds, batch_size=2, checkpoint_seconds=0.0)
    partial = cache_path(tmp_path, "tiny-clip").with_name("tiny-clip.partial.safetensors")
    assert partial.is_file() and not cache_path(tmp_path, "tiny-clip").exists()
    assert len(Features.load(partial)) == 4  # two batches of two made it to disk
    rest = CountingEncoder(tiny)
    monkeypatch.setattr(dtrec.encoders, "get_encoder", lambda name, device=None: rest)
    done, _ = _extract(ds, batch_size=2)
    assert rest.texts == 2, "only the last batch should be encoded again"
    assert not partial.exists()
    for m in ("text", "image"):
        assert torch.allclose(done.values[m], full.values[m], atol=1e-6)
        assert torch.equal(done.present[m], full.present[m])


def test_catalog_without_root_is_not_cached(tmp_path, tiny):
    _write_images(tmp_path)
    cat = Catalog([Item("x", "Only Item", "", str(tmp_path / "images" / "a.png"))])
    feats = extract(cat, tiny, progress=False)
    assert feats.present["image"].tolist() == [True] and not (tmp_path / "features").exists()
    with pytest.raises(ValueError, match="batch_size"):
        extract(cat, tiny, batch_size=0)


def test_cli_extract_reports_rate_and_cache(tmp_path, capsys):
    from dtrec.cli import main

    make_dataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["extract", str(tmp_path), "--encoder", "tiny-clip", "--batch-size", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "items/s" in out and str(cache_path(tmp_path, "tiny-clip")) in out and "5 with text" in out
    assert main(["extract", str(tmp_path), "--encoder", "tiny-clip"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["extract", str(tmp_path), "--encoder", "no-such-encoder"]) == 2
    assert "unknown encoder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- compact cache
def test_cache_stores_only_rows_that_have_the_modality(tmp_path, tiny):
    from safetensors import safe_open

    ds = make_dataset(tmp_path)
    feats, _ = _extract(ds)
    with safe_open(str(cache_path(tmp_path, "tiny-clip")), framework="pt") as f:
        assert f.get_slice("text").get_shape() == [5, 32]  # item c has no text
        assert f.get_slice("image").get_shape() == [3, 32]  # a, c, e: the readable images
    loaded = load_features(tmp_path, "tiny-clip")
    for m in ("text", "image"):
        assert torch.equal(loaded.values[m], feats.values[m]) and torch.equal(loaded.present[m], feats.present[m])


def test_titles_only_catalog_stores_no_image_column(tmp_path, counted):
    from safetensors import safe_open

    n = 300
    ds = Dataset(Catalog([Item(f"t{i}", f"title number {i}", "") for i in range(n)], root=tmp_path),
                 Interactions([], []), name="titles")
    ds.save(tmp_path)
    feats, _ = _extract(ds, batch_size=64)
    assert counted[0].image_calls == 0 and counted[0].texts == n
    path = cache_path(tmp_path, "tiny-clip")
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"text", "text_present"}
    assert path.stat().st_size < n * 32 * 4 + 4096  # the text rows, a mask and a header: no image block
    loaded = load_features(tmp_path, "tiny-clip")
    assert loaded.dims == {"text": 32, "image": 32} and len(loaded) == n
    assert not loaded.present["image"].any()
    assert loaded.values["image"].shape == (n, 32) and loaded.values["image"].untyped_storage().nbytes() == 32 * 4
    rows = loaded.subset([3, 7]).values["image"]
    assert rows.shape == (2, 32) and (rows == 0).all()


def test_dense_cache_of_earlier_versions_still_loads(tmp_path):
    from safetensors.torch import save_file

    ds = make_dataset(tmp_path)
    g = torch.Generator().manual_seed(0)
    present = {"text": torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool), "image": torch.zeros(6, dtype=torch.bool)}
    values = {m: torch.randn(6, 8, generator=g) * present[m].unsqueeze(1) for m in present}
    tensors = {**values, **{f"{m}_present": p.to(torch.uint8) for m, p in present.items()}}
    cache_path(tmp_path, "old").parent.mkdir(parents=True)
    save_file(tensors, str(cache_path(tmp_path, "old")), metadata={
        "encoder": "old", "fingerprint": ds.catalog.fingerprint(), "dims": '{"text": 8, "image": 8}'})
    got = load_features(tmp_path, "old")
    for m in present:
        assert torch.equal(got.values[m], values[m]) and torch.equal(got.present[m], present[m])


def test_catalog_features_survive_adding_interactions(tmp_path, counted, fixtures_dir):
    from dtrec.data.prepare import prepare

    src = fixtures_dir / "jsonl"
    out = tmp_path / "data"
    prepare("jsonl", out, items=src / "items.jsonl")
    _extract(Dataset.load(out))
    ds = prepare("jsonl", out, items=src / "items.jsonl", interactions=src / "interactions.csv")
    assert len(ds.interactions) > 0
    stats: dict = {}
    _extract(Dataset.load(out), stats=stats)
    assert stats["cached"] and len(counted) == 1, "the catalog's features must carry over to the full data set"


def test_interrupt_keeps_every_finished_batch(tmp_path, monkeypatch, tiny):
    ds = make_dataset(tmp_path)
    flaky = CountingEncoder(tiny, fail_after=2)
    monkeypatch.setattr(dtrec.encoders, "get_encoder", lambda name, device=None: flaky)
    stats: dict = {}
    with pytest.raises(KeyboardInterrupt):
        _extract(ds, batch_size=2, checkpoint_seconds=1e9, stats=stats)  # no timed checkpoint would happen
    partial = cache_path(tmp_path, "tiny-clip").with_name("tiny-clip.partial.safetensors")
    assert stats["interrupted_at"] == 4 and len(Features.load(partial)) == 4
    rest = CountingEncoder(tiny)
    monkeypatch.setattr(dtrec.encoders, "get_encoder", lambda name, device=None: rest)
    _extract(ds, batch_size=2)
    assert rest.texts == 2
