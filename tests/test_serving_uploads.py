"""Upload validation (dtrec.serving.uploads): a refused upload raises one sentence and stores nothing; an
accepted image becomes an RGB thumbnail, whatever its mode."""

import io
import struct
import zlib

import pytest
from PIL import Image
from synthetic import open_demo, png_bytes

from dtrec.config import ServeConfig
from dtrec.serving.errors import ImageError, InputError
from dtrec.serving.uploads import check_item_text, clean_text, read_image


def _images(store) -> int:
    return len(list((store / "images").iterdir()))


def _rows(rec) -> int:
    return len(rec.store)


def test_text_is_cleaned_and_bounded():
    cfg = ServeConfig(max_title_chars=10, max_text_chars=12)
    assert clean_text(" a\u200b\tb\r\nc\x07 ", keep_newlines=False) == "a b c"
    assert clean_text("a\r\nb", keep_newlines=True) == "a\nb"
    assert check_item_text(" Title\x00 ", None, cfg) == ("Title", "")
    for title, text in (("", ""), ("t" * 11, ""), ("ok", "x" * 13)):
        with pytest.raises(InputError):
            check_item_text(title, text, cfg)


def test_read_image_gives_a_bounded_rgb_thumbnail(tmp_path):
    cfg = ServeConfig(thumbnail_px=64)
    path = tmp_path / "wide.png"
    path.write_bytes(png_bytes(300, 100, (10, 20, 30, 40), mode="RGBA"))
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        thumb = read_image(source, cfg)
        assert thumb.mode == "RGB" and thumb.size == (64, 21)
    with pytest.raises(ImageError, match="too many pixels"):
        read_image(png_bytes(300, 100), ServeConfig(max_pixels=1000))


def _bombpng_bytes(w=100_000, h=100_000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD_UPLOADS = {
    "non-image bytes": dict(title="x", image=b"%PDF-1.4 definitely not a picture"),
    "empty file": dict(title="x", image=b""),
    "truncated png": dict(title="x", image=png_bytes(64, 64, (1, 2, 3))[:60]),
    "decompression bomb": dict(title="x", image=_bombpng_bytes()),
    "over the pixel limit": dict(title="x", image=png_bytes(2000, 1000, 0, mode="1")),
    "over the byte limit": dict(title="x", image=b"\xff\xd8" + b"\0" * 3_000_000),
    "eps is not accepted": dict(title="x", image=b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"),
    "missing file": dict(title="x", image="/nonexistent/picture.png"),
    "empty title": dict(title=""),
    "control-only title": dict(title=" \x00\x07\u200b "),
    "10,000-char title": dict(title="t" * 10_000),
    "long text": dict(title="ok", text="x" * 5000),
    "wrong type": dict(title="ok", image=12345),
}


def test_bad_uploads_raise_and_store_nothing(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path, max_pixels=1_000_000, max_upload_bytes=2_000_000)
    n0, img0, idx0 = _rows(rec), _images(tmp_path), len(rec.index)
    for name, kwargs in BAD_UPLOADS.items():
        with pytest.raises(InputError) as e:
            rec.add_item(**kwargs)
        msg = str(e.value)
        assert msg.endswith(".") and "\n" not in msg and len(msg) < 160, (name, msg)
        assert _rows(rec) == n0 and _images(tmp_path) == img0 and len(rec.index) == idx0, name


@pytest.mark.parametrize("make", [
    lambda: png_bytes(300, 200, (10, 20, 30, 40), mode="CMYK", fmt="JPEG"),
    lambda: png_bytes(30, 20, 3, mode="P", transparency=3),
    lambda: png_bytes(30, 20, (100, 50), mode="LA"),
    lambda: _gif(),
    lambda: Image.new("RGBA", (40, 40), (1, 2, 3, 0)),
])
def test_image_modes_are_converted_to_rgb(synthetic_demo, tmp_path, make):
    rec = open_demo(synthetic_demo, tmp_path)
    new_id, _ = rec.add_item("Odd picture", image=make())
    with Image.open(rec.get(new_id).image) as im:
        assert im.mode == "RGB" and max(im.size) <= 256


def _gif() -> bytes:
    frames = [Image.new("P", (20, 20), c) for c in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], loop=0)
    return buf.getvalue()
