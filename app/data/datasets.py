"""Datasets made from a directory with one folder per class.

`prepare_dataset` opens every file once, skips (and reports) what is not a usable image,
and writes each good one, decoded by `app.data.images.load_image` at the training size, into
a working folder. `load_datasets` then reads that folder with
`keras.utils.image_dataset_from_directory`, so training never meets a bad file mid-epoch
and sees the same pixels the service will feed the model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from app.data.images import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS, ImageError, load_image
from app.errors import ConvserveError

# Files and folders that archives and file managers leave behind; never classes or images.
JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini", "ehthumbs.db"})
MIN_IMAGES_PER_CLASS = 5
MAX_FILE_BYTES = 50 * 1024 * 1024
# In a prepared folder: prepared image (relative) -> the uploaded file it came from.
SOURCES_FILE = "sources.json"


class DatasetError(ConvserveError):
    """A dataset that cannot be trained on (HTTP 400)."""


@dataclass
class SkippedFile:
    path: str
    reason: str


# A class with fewer images than this gets a warning in the dataset check.
FEW_IMAGES_WARNING = 20
# Largest class over smallest above which the check warns of imbalance.
IMBALANCE_RATIO = 2.0


@dataclass
class DatasetSummary:
    class_names: list[str]
    counts: dict[str, int]
    skipped: list[SkippedFile] = field(default_factory=list)
    # Groups of files with the same bytes (paths relative to the class root).
    duplicates: list[list[str]] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """What is worth knowing before training, though it does not stop a job."""
        found = []
        if self.counts:
            most = max(self.counts, key=lambda c: self.counts[c])
            least = min(self.counts, key=lambda c: self.counts[c])
            if self.counts[most] > IMBALANCE_RATIO * self.counts[least]:
                found.append(
                    f"the classes are imbalanced: {most!r} has {self.counts[most]} images,"
                    f" {least!r} {self.counts[least]}"
                )
        for name, count in self.counts.items():
            if count < FEW_IMAGES_WARNING:
                found.append(
                    f"class {name!r} has {count} images; {FEW_IMAGES_WARNING} or more per class"
                    " give better models"
                )
        if self.duplicates:
            extra = sum(len(group) - 1 for group in self.duplicates)
            found.append(f"{extra} files are exact copies of another file in the dataset")
        if self.skipped:
            found.append(f"{len(self.skipped)} files are not usable images and will be skipped")
        return found

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSummary:
        return cls(
            list(data["class_names"]),
            dict(data["counts"]),
            [SkippedFile(**s) for s in data.get("skipped", [])],
            [list(g) for g in data.get("duplicates", [])],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "counts": self.counts,
            "images": self.total,
            "skipped": [asdict(s) for s in self.skipped],
            "duplicates": self.duplicates,
            "warnings": self.warnings,
        }


def is_junk(path: Path) -> bool:
    return path.name in JUNK_NAMES or path.name.startswith(".") or path.name.startswith("._")


def _visible(entries: Iterable[Path]) -> list[Path]:
    return sorted(p for p in entries if not is_junk(p))


def find_class_root(directory: Path) -> Path:
    """The folder whose subfolders are the classes: ``directory`` itself, or its only
    subfolder when the archive wrapped everything in one root folder."""
    if not directory.is_dir():
        raise DatasetError("not_found", f"{directory} is not a directory")
    entries = _visible(directory.iterdir())
    dirs = [p for p in entries if p.is_dir()]
    files = [p for p in entries if p.is_file()]
    if len(dirs) == 1 and not files and any(p.is_dir() for p in _visible(dirs[0].iterdir())):
        return dirs[0]
    return directory


def _class_files(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(is_junk(Path(part)) for part in rel.parts):
            continue
        if path.is_file() and not path.is_symlink():
            found.append(path)
    return found


def min_images_needed(validation_split: float, min_images: int = MIN_IMAGES_PER_CLASS) -> int:
    """Images a class needs so that the split can give it a validation share."""
    if validation_split <= 0:
        return max(min_images, 1)
    return max(min_images, math.ceil(1 / validation_split))


def _convert(src: Path, dst: Path, image_size: int, max_pixels: int) -> str | None:
    """Decode ``src`` into a PNG at ``dst``; return the reason it was skipped, or None."""
    try:
        if src.stat().st_size > MAX_FILE_BYTES:
            return f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB"
        pixels = load_image(src.read_bytes(), image_size, max_pixels)
    except ImageError as exc:
        return exc.message
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    # Lossless, and fast at the lowest compression: this is a working copy.
    Image.fromarray(pixels).save(dst, format="PNG", compress_level=1)
    return None


def prepare_dataset(
    source: Path,
    destination: Path,
    image_size: int,
    validation_split: float = 0.2,
    min_images: int = MIN_IMAGES_PER_CLASS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 4,
) -> DatasetSummary:
    """Check ``source`` and write its usable images, resized, under ``destination``.

    Class ``i`` (in sorted order of folder names) goes to ``destination/<i:04d>/``, so that
    folder names with spaces or any Unicode never reach TensorFlow's file handling.

    Raises:
        DatasetError: ``no_classes``, ``too_few_classes``, ``empty_class`` or
            ``too_few_images``, each with a sentence naming the class.
    """
    root, class_dirs = _class_dirs(Path(source))
    if destination.exists():
        shutil.rmtree(destination)
    jobs: list[tuple[str, Path, Path]] = []
    for index, class_dir in enumerate(class_dirs):
        out_dir = destination / f"{index:04d}"
        out_dir.mkdir(parents=True)
        for n, path in enumerate(_class_files(class_dir)):
            jobs.append((class_dir.name, path, out_dir / f"{n:06d}.png"))

    skipped: list[SkippedFile] = []
    counts = {d.name: 0 for d in class_dirs}
    sources: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = pool.map(lambda job: _convert(job[1], job[2], image_size, max_pixels), jobs)
        for (class_name, path, out), reason in zip(jobs, reasons, strict=True):
            if reason is None:
                counts[class_name] += 1
                sources[out.relative_to(destination).as_posix()] = path.relative_to(root).as_posix()
            else:
                skipped.append(SkippedFile(str(path.relative_to(root)), reason))

    _check_counts(counts, validation_split, min_images)
    # Which uploaded file each prepared image came from (shown beside validation images).
    (destination / SOURCES_FILE).write_text(json.dumps(sources))
    return DatasetSummary([d.name for d in class_dirs], counts, skipped)


def _class_dirs(source: Path) -> tuple[Path, list[Path]]:
    root = find_class_root(source)
    class_dirs = [p for p in _visible(root.iterdir()) if p.is_dir() and not p.is_symlink()]
    if not class_dirs:
        raise DatasetError(
            "no_classes", "the dataset has no class folders: put each class's images in a folder"
        )
    if len(class_dirs) < 2:
        raise DatasetError(
            "too_few_classes",
            f"the dataset has one class ({class_dirs[0].name!r}); at least two are needed",
        )
    return root, class_dirs


def _check_counts(counts: dict[str, int], validation_split: float, min_images: int) -> None:
    needed = min_images_needed(validation_split, min_images)
    for name, count in counts.items():
        if count == 0:
            raise DatasetError("empty_class", f"class {name!r} has no usable images")
        if count < needed:
            raise DatasetError(
                "too_few_images",
                f"class {name!r} has {count} usable images; each class needs at least {needed}"
                f" (validation split {validation_split})",
            )


def _header_problem(data: bytes, max_pixels: int) -> str | None:
    """Why ``data`` is not a usable image, judged from its header alone (cheap)."""
    if len(data) > MAX_FILE_BYTES:
        return f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB"
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in SUPPORTED_FORMATS:
                return f"{img.format} images are not supported"
            if img.width * img.height > max_pixels:
                return f"{img.width}x{img.height} pixels, over the limit of {max_pixels}"
    except Exception:
        return "not an image we can read"
    return None


def image_problem(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why ``data`` is not an image a dataset can hold (from its header), or None."""
    if not data:
        return "an empty file"
    return _header_problem(data, max_pixels)


def usable_files(
    source: Path, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[list[tuple[str, Path]], list[SkippedFile]]:
    """The class (folder name) and path of every usable image under ``source`` (one
    folder per class, as `scan_dataset` reads it), and the files skipped with why."""
    root, class_dirs = _class_dirs(Path(source))
    found: list[tuple[str, Path]] = []
    skipped: list[SkippedFile] = []
    for class_dir in class_dirs:
        for path in _class_files(class_dir):
            relative = str(path.relative_to(root))
            try:
                reason = image_problem(path.read_bytes(), max_pixels)
            except OSError as exc:
                reason = f"cannot be read: {exc.strerror or exc}"
            if reason is None:
                found.append((class_dir.name, path))
            else:
                skipped.append(SkippedFile(relative, reason))
    return found, skipped


def check_counts(counts: dict[str, int], validation_split: float, min_images: int) -> None:
    """Raise `DatasetError` unless every class has enough images for the split, and
    there are at least two classes."""
    if len(counts) < 2:
        raise DatasetError(
            "too_few_classes",
            f"the dataset has {len(counts)} class(es); at least two are needed",
        )
    _check_counts(counts, validation_split, min_images)


def scan_dataset(
    source: Path,
    validation_split: float = 0.2,
    min_images: int = MIN_IMAGES_PER_CLASS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DatasetSummary:
    """The checks of `prepare_dataset` from image headers only: fast enough to run on an
    upload before a job is queued (and by the ``convserve`` command on a local folder).
    Also finds files that are exact copies of each other. Corrupt pixel data is caught
    later, by the full pass."""
    root, class_dirs = _class_dirs(Path(source))
    counts = {d.name: 0 for d in class_dirs}
    skipped: list[SkippedFile] = []
    by_digest: dict[str, list[str]] = {}
    for class_dir in class_dirs:
        for path in _class_files(class_dir):
            relative = str(path.relative_to(root))
            try:
                data = path.read_bytes()
            except OSError as exc:
                skipped.append(SkippedFile(relative, f"cannot be read: {exc.strerror or exc}"))
                continue
            reason = _header_problem(data, max_pixels)
            if reason is None:
                counts[class_dir.name] += 1
                by_digest.setdefault(hashlib.sha256(data).hexdigest(), []).append(relative)
            else:
                skipped.append(SkippedFile(relative, reason))
    _check_counts(counts, validation_split, min_images)
    duplicates = [group for group in by_digest.values() if len(group) > 1]
    return DatasetSummary([d.name for d in class_dirs], counts, skipped, duplicates)


def load_datasets(
    prepared: Path,
    num_classes: int,
    image_size: int,
    batch_size: int = 32,
    validation_split: float = 0.2,
    seed: int = 42,
) -> tuple[Any, Any, list[str]]:
    """Training and validation `tf.data.Dataset`s of `(images, int labels)` batches, and
    the validation files in the validation set's order.

    Images are `float32` raw pixels `(batch, S, S, 3)`. The split is
    `image_dataset_from_directory`'s, seeded. The training set is cached and reshuffled
    every epoch; the validation set is read in a fixed order, so each prediction on it
    can be matched to its file.
    """
    import keras

    train, val = keras.utils.image_dataset_from_directory(
        prepared,
        labels="inferred",
        label_mode="int",
        class_names=[f"{i:04d}" for i in range(num_classes)],
        image_size=(image_size, image_size),
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        validation_split=validation_split,
        subset="both",
        verbose=False,
    )
    train = _reshuffled(train.unbatch(), len(train.file_paths), batch_size, seed)
    # The validation split's own dataset reshuffles on every pass, which would hide which
    # prediction belongs to which file.
    val_files = sorted(val.file_paths)
    return train, load_files(val_files, image_size, batch_size).cache(), val_files


def load_training_files(files: list[str], image_size: int, batch_size: int, seed: int) -> Any:
    """Prepared images as a training set, as `load_datasets` gives its own."""
    images = load_files(files, image_size, batch_size).unbatch()
    return _reshuffled(images, len(files), batch_size, seed)


def _reshuffled(images: Any, count: int, batch_size: int, seed: int) -> Any:
    """A training set from ``count`` unbatched ``(image, label)`` pairs: decoded images
    cached, then reshuffled every epoch (caching the batched set would freeze the first
    epoch's batches), batched."""
    import tensorflow as tf

    steps = math.ceil(count / batch_size)
    return (
        images.cache()
        .shuffle(2048, seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        # Re-batching hides the number of batches; Keras needs it for per-step progress.
        .apply(tf.data.experimental.assert_cardinality(steps))
        .prefetch(tf.data.AUTOTUNE)
    )


def load_files(files: list[str], image_size: int, batch_size: int = 32) -> Any:
    """Prepared images (``<class index>/<n>.png``) in the given order, labelled by folder."""
    import tensorflow as tf

    labels = [int(Path(f).parent.name) for f in files]

    def read(path: Any, label: Any) -> tuple[Any, Any]:
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)
        # The same float32 pixels image_dataset_from_directory gives (already this size).
        image = tf.image.resize(image, (image_size, image_size))
        image.set_shape((image_size, image_size, 3))
        return image, label

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files, tf.string), tf.constant(labels, tf.int32))
    )
    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)


def load_directory(prepared: Path, num_classes: int, image_size: int, batch_size: int = 32) -> Any:
    """All images of a prepared folder, unshuffled, for evaluation."""
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(
        prepared,
        labels="inferred",
        label_mode="int",
        class_names=[f"{i:04d}" for i in range(num_classes)],
        image_size=(image_size, image_size),
        batch_size=batch_size,
        shuffle=False,
        verbose=False,
    )
    return ds.prefetch(tf.data.AUTOTUNE)
