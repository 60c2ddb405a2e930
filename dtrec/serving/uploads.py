"""Validation of an upload: its title and text cleaned and bounded, its image read as a safe, small RGB
thumbnail (what is stored and encoded), or one sentence saying why not."""

from __future__ import annotations

import io
import re
import unicodedata
import warnings
from pathlib import Path

from PIL import Image

from dtrec.config import ServeConfig
from dtrec.encoders.base import to_rgb
from dtrec.serving.errors import ImageError, InputError, human_bytes

# Formats an upload may have. Deliberately short: every decoder is attack surface, and
# some (EPS) would run external programs.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "MPO")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def clean_text(text: str, keep_newlines: bool) -> str:
    """`text` with control and invisible format characters removed, normalised (NFC) and stripped."""
    text = unicodedata.normalize("NFC", str(text))
    if not keep_newlines:
        text = re.sub(r"[\r\n\t]+", " ", text)
    else:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text).strip()


def check_item_text(title: str | None, text: str | None, config: ServeConfig) -> tuple[str, str]:
    """An upload's (title, text) cleaned; InputError without a title or past the length limits."""
    title = clean_text(title if title is not None else "", keep_newlines=False)
    text = clean_text(text if text is not None else "", keep_newlines=True)
    if not title:
        raise InputError("Give the item a title.")
    if len(title) > config.max_title_chars:
        raise InputError(f"The title is longer than {config.max_title_chars} characters.")
    if len(text) > config.max_text_chars:
        raise InputError(f"The description is longer than {config.max_text_chars} characters.")
    return title, text


def check_pixels(w: int, h: int, max_pixels: int) -> None:
    """ImageError for an image without pixels or with more than `max_pixels`."""
    if w <= 0 or h <= 0:
        raise ImageError("The image has no pixels.")
    if w * h > max_pixels:
        raise ImageError(f"The image has too many pixels (more than {max_pixels / 1e6:g} megapixels).")


def thumbnail(im: Image.Image, px: int) -> Image.Image:
    """An RGB copy of `im` at most `px` wide and high."""
    rgb = to_rgb(im)
    if rgb is im:
        rgb = rgb.copy()
    rgb.thumbnail((px, px), Image.Resampling.LANCZOS)
    return rgb


def read_image(image: Image.Image | bytes | str | Path, config: ServeConfig) -> Image.Image:
    """A validated RGB thumbnail of an upload; ImageError for anything that is not a safe image.

    A `str`/`Path` is read from the server's disk: callers pass only paths of files a client uploaded.
    """
    limit = config.max_upload_bytes
    if isinstance(image, Image.Image):
        w, h = image.size
        check_pixels(w, h, config.max_pixels)
        try:
            if getattr(image, "is_animated", False):
                image.seek(0)
            image.load()
            return thumbnail(image, config.thumbnail_px)
        except ImageError:
            raise
        except Exception:
            raise ImageError("The image could not be read.") from None
    if isinstance(image, (str, Path)):
        p = Path(image)
        try:
            if not p.is_file():
                raise ImageError("The image file could not be found.")
            if p.stat().st_size > limit:
                raise ImageError(f"The image is larger than {human_bytes(limit)}.")
            data = p.read_bytes()
        except OSError:
            raise ImageError("The image file could not be read.") from None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        raise ImageError("The image must be an image file, its bytes or a PIL image.")
    if not data:
        raise ImageError("The image file is empty.")
    if len(data) > limit:
        raise ImageError(f"The image is larger than {human_bytes(limit)}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                check_pixels(*im.size, config.max_pixels)  # from the header, before any pixel is decoded
                im.verify()
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                check_pixels(*im.size, config.max_pixels)
                im.seek(0)
                im.load()
                return thumbnail(im, config.thumbnail_px)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("The image has too many pixels.") from None
    except Exception:  # PIL raises many types for malformed files (OSError, SyntaxError, ValueError, ...)
        raise ImageError("The file is not a readable JPEG, PNG, GIF, WebP or BMP image.") from None


def jpeg_bytes(thumb: Image.Image) -> bytes:
    """The stored form of an upload's thumbnail: JPEG, quality 90."""
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
