import numpy as np
import pytest
from PIL import Image

from app.data.images import ImageError, load_image
from tests.helpers import image_bytes, pattern_image


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "LA", "1"])
def test_every_mode_becomes_rgb_at_the_requested_size(mode):
    img = pattern_image("hstripes", 40).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = load_image(image_bytes(img, fmt), 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    arr = np.full((10, 10), 32768, dtype=np.uint16)
    out = load_image(image_bytes(Image.fromarray(arr), "PNG"), 10)
    assert 120 <= out.mean() <= 135  # half of full scale, not 255


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert load_image(image_bytes(img, "PNG"), 8).min() == 255


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    data = image_bytes(img, "JPEG", exif=exif, quality=95)
    out = load_image(data, 20)
    # Displayed upright, the blue half is on top.
    assert out[2, 10, 2] > 200 and out[18, 10, 0] > 200


def test_one_pixel_image_works():
    assert load_image(image_bytes(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), 16).shape == (
        16,
        16,
        3,
    )


@pytest.mark.parametrize(
    "data, code, status",
    [
        (b"", "empty_file", 400),
        (b"this is not an image at all", "invalid_image", 400),
        (image_bytes(pattern_image("dark", 64), "JPEG")[:300], "invalid_image", 400),
        (image_bytes(pattern_image("dark", 16), "TIFF"), "unsupported_media_type", 415),
    ],
    ids=["empty", "text", "truncated", "tiff"],
)
def test_bad_images_raise_clear_errors(data, code, status):
    with pytest.raises(ImageError) as info:
        load_image(data, 16)
    assert (info.value.code, info.value.status) == (code, status)


def test_decompression_bomb_is_refused_before_decoding():
    data = image_bytes(Image.new("L", (5000, 5000)), "PNG")  # compresses to a few KB
    with pytest.raises(ImageError) as info:
        load_image(data, 16, max_pixels=1_000_000)
    assert (info.value.code, info.value.status) == ("image_too_large", 413)


def test_large_jpeg_is_drafted_and_still_resized_correctly():
    big = pattern_image("vstripes", 64).resize((2048, 2048))
    out = load_image(image_bytes(big, "JPEG", quality=90), 64)
    small = load_image(image_bytes(pattern_image("vstripes", 64).resize((64, 64)), "PNG"), 64)
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - small.astype(int)).mean() < 40


def test_gif_and_webp_and_bmp_decode():
    img = pattern_image("checks", 20)
    for fmt in ("GIF", "WEBP", "BMP"):
        assert load_image(image_bytes(img, fmt), 20).shape == (20, 20, 3)
