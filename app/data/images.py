"""Decoding one image into the pixels a model takes.

Training (the dataset pass in `app.data.datasets`) and serving both call `load_image`, so
a model is served exactly the decoding, orientation, colour conversion and resizing it was
trained on.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ConvserveError

# What Pillow reports for the formats we take. MPO is the JPEG variant many cameras write.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
DEFAULT_MAX_PIXELS = 40_000_000
_WHITE = (255, 255, 255)


class ImageError(ConvserveError):
    """An image that cannot be used."""


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16- and 32-bit grayscale: Pillow's convert() clips at 255, so scale instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode != "F" and arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        arr8 = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, not whatever colour they happen to store.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def load_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``data`` into a `(size, size, 3)` `uint8` RGB array.

    EXIF orientation is applied; any mode (L, P, RGBA, CMYK, 16-bit) becomes RGB; the image
    is resized (squashed, bilinear with antialiasing) to ``size`` x ``size``. Large JPEGs are
    decoded at a reduced scale (Pillow's ``draft``), which is several times faster.

    Raises:
        ImageError: empty (``empty_file``), not an image or corrupt (``invalid_image``),
            a format we do not take (``unsupported_media_type``, 415), more than
            ``max_pixels`` pixels (``image_too_large``, 413).
    """
    if not data:
        raise ImageError("empty_file", "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image_too_large", f"the image has too many pixels: {exc}", 413) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("invalid_image", "the file is not an image we can read") from exc
    except Exception as exc:  # Pillow raises assorted errors on malformed headers
        raise ImageError("invalid_image", f"the image cannot be read: {exc}") from exc
    if img.format not in SUPPORTED_FORMATS:
        raise ImageError(
            "unsupported_media_type",
            f"{img.format} images are not supported; send JPEG, PNG, BMP, GIF or WebP",
            415,
        )
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large",
            f"the image has {width}x{height} pixels, more than the limit of {max_pixels}",
            413,
        )
    try:
        if img.format in ("JPEG", "MPO"):
            img.draft("RGB", (size, size))
        img.load()
        img = ImageOps.exif_transpose(img, in_place=True) or img  # no copy when upright
        img = _to_rgb(img)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:  # truncated data, broken chunks, bad EXIF
        raise ImageError("invalid_image", f"the image is corrupt or truncated: {exc}") from exc
