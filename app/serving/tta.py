"""Test-time augmentation: classify several views of each image and average them.

``flip`` adds the mirror image (2 views). ``crops`` is the multi-crop evaluation of
AlexNet and VGG: the image at 8/7 of the input size (256 for 224), its centre and four
corner crops at the input size, and the mirror of each (10 views). The views go through
the batcher with every other image, so they share batches; their probabilities are
averaged per image.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

TTA = Literal["none", "flip", "crops"]
VIEWS: dict[str, int] = {"none": 1, "flip": 2, "crops": 10}
CROP_SCALE = 8 / 7  # 256 / 224


def decode_size(size: int, tta: str) -> int:
    """The side to decode images at for ``tta`` (larger for crops)."""
    return round(size * CROP_SCALE) if tta == "crops" else size


def _mirror(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def views(image: np.ndarray, tta: str, size: int) -> list[np.ndarray]:
    """The views of one `(side, side, 3)` `uint8` image to classify at ``size``.

    For ``crops`` an image decoded at ``size`` (a pixel tensor) is first enlarged to the
    crop scale, bilinear, as decoding would have made it.
    """
    if tta == "none":
        return [image]
    if tta == "flip":
        return [image, _mirror(image)]
    big = decode_size(size, "crops")
    if image.shape[0] != big:
        image = np.asarray(Image.fromarray(image).resize((big, big), Image.Resampling.BILINEAR))
    m = big - size
    centre = m // 2
    corners = [(centre, centre), (0, 0), (0, m), (m, 0), (m, m)]
    crops = [np.ascontiguousarray(image[y : y + size, x : x + size]) for y, x in corners]
    return crops + [_mirror(c) for c in crops]


def expand(images: list[np.ndarray], tta: str, size: int) -> list[np.ndarray]:
    """Every image's views, image after image (``VIEWS[tta]`` each)."""
    return [view for image in images for view in views(image, tta, size)]


def combine(rows: list[np.ndarray], tta: str) -> list[np.ndarray]:
    """The mean probabilities of each image's views, in image order."""
    k = VIEWS[tta]
    if k == 1:
        return rows
    return [np.mean(rows[i : i + k], axis=0) for i in range(0, len(rows), k)]
