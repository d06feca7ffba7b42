"""A version's held-out set (``heldout.npz``): its validation images, as the pixels the
model takes (decoded and resized exactly as serving does), with their labels, and a
calibration sample of its training images. The precision study (`app.serving.precision`)
measures each inference precision on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.data.images import IMAGE_SUFFIXES, ImageError, load_image

HELDOUT_FILE = "heldout.npz"
MAX_HELDOUT_IMAGES = 1000
MAX_CALIBRATION_IMAGES = 300  # NNCF's default calibration subset


@dataclass
class HeldOut:
    images: np.ndarray  # (n, S, S, 3) uint8, the pixels the model takes
    labels: np.ndarray  # (n,) class indices
    calibration: np.ndarray  # (m, S, S, 3) uint8, from the training images

    def save(self, folder: Path) -> Path:
        path = Path(folder) / HELDOUT_FILE
        np.savez_compressed(
            path, images=self.images, labels=self.labels, calibration=self.calibration
        )
        return path

    def summary(self) -> dict[str, int]:
        return {"images": len(self.images), "calibration_images": len(self.calibration)}


def read_heldout(folder: Path) -> HeldOut | None:
    """The version's held-out set, or None when it has none (bootstrap versions).

    Raises:
        ValueError: the file is damaged.
    """
    arrays = read_arrays(Path(folder) / HELDOUT_FILE, "images", "labels", "calibration")
    return None if arrays is None else HeldOut(*arrays)


def read_arrays(path: Path, *names: str) -> list[np.ndarray] | None:
    """The named arrays of a version's ``.npz`` file, or None when there is no such file.

    Raises:
        ValueError: the file is damaged (not a zip, a member missing, cut short).
    """
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return [data[name] for name in names]
    except Exception as exc:
        raise ValueError(f"{path} cannot be read: {exc}") from exc


def seeded_sample(items: list[Any], limit: int, seed: int) -> list[Any]:
    """``items``, or a seeded sample of ``limit`` of them in their order."""
    if len(items) <= limit:
        return list(items)
    picked = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
    return [items[i] for i in sorted(picked)]


def _read_png(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def heldout_from_prepared(
    val_files: list[str], train_files: list[str], image_size: int, seed: int = 0
) -> HeldOut:
    """The held-out set of a trained version: its validation images and a sample of its
    training images, read from the prepared folder (``<class index>/<n>.png``, already
    decoded and resized by `app.data.images.load_image`, as serving does)."""
    val = seeded_sample(sorted(val_files), MAX_HELDOUT_IMAGES, seed)
    calibration = seeded_sample(sorted(train_files), MAX_CALIBRATION_IMAGES, seed + 1)
    return HeldOut(
        read_prepared(val, image_size),
        np.array([int(Path(f).parent.name) for f in val], dtype=np.int64),
        read_prepared(calibration, image_size),
    )


def read_prepared(files: list[str], image_size: int) -> np.ndarray:
    """Prepared images (PNGs written by training) as one pixel tensor."""
    if not files:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.stack([_read_png(f) for f in files])


def heldout_from_directory(
    data_dir: Path, class_names: list[str], image_size: int, seed: int = 0
) -> HeldOut:
    """A held-out set from labelled images an operator points at (a folder per class,
    named as the model's classes): a seeded share of them (at most half, at most
    `MAX_CALIBRATION_IMAGES`) calibrates, the rest measures accuracy.

    Raises:
        ValueError: a folder that is not one of the model's classes, or no images.
    """
    files: list[tuple[Path, int]] = []
    for folder in sorted(p for p in Path(data_dir).iterdir() if p.is_dir()):
        if folder.name not in class_names:
            raise ValueError(f"{folder.name!r} is not a class of this model")
        index = class_names.index(folder.name)
        files += [
            (f, index)
            for f in sorted(folder.rglob("*"))
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        ]
    images, labels = [], []
    for path, index in files:
        try:
            images.append(load_image(path.read_bytes(), image_size))
        except ImageError:
            continue
        labels.append(index)
    if not images:
        raise ValueError(f"no usable images in class folders under {data_dir}")
    order = np.random.default_rng(seed).permutation(len(images))
    n_cal = min(MAX_CALIBRATION_IMAGES, len(images) // 2)
    cal, held = order[:n_cal], np.sort(order[n_cal:])[:MAX_HELDOUT_IMAGES]
    stacked = np.stack(images)
    return HeldOut(stacked[held], np.array(labels, dtype=np.int64)[held], stacked[np.sort(cal)])
