"""Label health of a dataset version: the images whose given label a model disagrees with
most, near duplicates, and the classes it confuses.

- Suspects come from predictions on images the classifier did not fit: the trained
  model's features (its pooled layer, before the head) of every image, then a logistic
  regression fitted k times, each time predicting the fold it left out (out-of-fold
  probabilities for every image, not only the validation split). cleanlab's
  `find_label_issues` (confident learning) picks the images whose label is likely wrong,
  ranked by the probability of the given label ("self-confidence"), lowest first.
- Near duplicates: a perceptual hash (imagehash's pHash) of every image; two images whose
  hashes differ in at most `NEAR_DUPLICATE_BITS` of 64 bits are reported, most alike
  first, across classes first (one of the two labels is wrong, or the image is in two
  classes). Exact copies cannot happen: a dataset stores each image once.
- Confused classes: the (given, predicted) pairs of the out-of-fold predictions.

The backbone itself was fine-tuned on the given labels, so it has seen a training image's
label, wrong or not; the benchmark (bench/label_health.py, docs/review.md) measures how
well the flipped labels are found nonetheless.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.data.images import DEFAULT_MAX_PIXELS, load_image

HEALTH_FILE = "label_health.json"  # the report a training job writes with its version
NEAR_DUPLICATE_BITS = 4
MAX_FOLDS = 5
SUSPECTS_LISTED = 100
FEATURE_LAYER = "avg_pool"  # the pooled features the head of a transfer model reads
BATCH = 32


@dataclass
class HealthImage:
    """One image of the version: its id, given label, file name and bytes."""

    id: str
    label: str
    filename: str
    read: Callable[[], bytes]


def feature_model(model: Any) -> Any:
    """The model up to its pooled features; a model without that layer (a network trained
    from scratch) gives its class probabilities, a coarser signal."""
    import keras

    names = {layer.name for layer in model.layers}
    if FEATURE_LAYER in names:
        return keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output)
    return model


def _batches(images: list[HealthImage], size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        yield np.stack([load_image(i.read(), size, DEFAULT_MAX_PIXELS) for i in chunk])


def features(model: Any, images: list[HealthImage], size: int) -> np.ndarray:
    net = feature_model(model)
    rows = [
        np.asarray(net(batch.astype(np.float32), training=False))
        for batch in _batches(images, size)
    ]
    return np.concatenate(rows).reshape(len(images), -1).astype(np.float32)


def out_of_fold(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, int]:
    """Out-of-fold class probabilities of every image (k-fold logistic regression on the
    standardized features), and k."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    folds = int(min(MAX_FOLDS, present.min())) if len(present) else 0
    probs = np.full((len(labels), num_classes), 1.0 / max(num_classes, 1), dtype=np.float32)
    if folds < 2 or len(present) < 2:
        return probs, 0
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    found = cross_val_predict(
        classifier,
        features,
        labels,
        cv=StratifiedKFold(folds, shuffle=True, random_state=0),
        method="predict_proba",
    )
    # cross_val_predict gives a column per class present in the labels.
    probs[:] = 0.0
    probs[:, np.flatnonzero(counts > 0)] = found
    return probs, folds


def perceptual_hashes(images: list[HealthImage]) -> np.ndarray:
    """Each image's 64-bit pHash as 64 booleans."""
    import imagehash
    from PIL import Image

    rows = []
    for image in images:
        with Image.open(io.BytesIO(image.read())) as img:
            rows.append(imagehash.phash(img.convert("RGB")).hash.reshape(-1))
    return np.array(rows, dtype=bool).reshape(len(images), 64)


def near_duplicates(
    hashes: np.ndarray, images: list[HealthImage], max_bits: int = NEAR_DUPLICATE_BITS
) -> list[dict[str, Any]]:
    """Pairs of images whose hashes differ in at most ``max_bits`` bits."""
    pairs = []
    for i in range(len(hashes) - 1):
        distance = (hashes[i + 1 :] != hashes[i]).sum(axis=1)
        for offset in np.flatnonzero(distance <= max_bits):
            j = i + 1 + int(offset)
            a, b = images[i], images[j]
            pairs.append(
                {
                    "a": a.id,
                    "b": b.id,
                    "a_label": a.label,
                    "b_label": b.label,
                    "distance": int(distance[offset]),
                    "across_classes": a.label != b.label,
                }
            )
    pairs.sort(key=lambda p: (not p["across_classes"], p["distance"], p["a"]))
    return pairs


def label_health(
    model: Any, images: list[HealthImage], classes: list[str], image_size: int
) -> dict[str, Any]:
    """The label-health report of ``images`` (each labelled with one of ``classes``), from
    ``model`` (a Keras classifier taking ``image_size`` pixels)."""
    from cleanlab.filter import find_label_issues

    started = time.perf_counter()
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[i.label] for i in images], dtype=np.int64)
    feats = features(model, images, image_size)
    embedded = time.perf_counter()
    probs, folds = out_of_fold(feats, labels, len(classes))
    fitted = time.perf_counter()
    suspects: list[dict[str, Any]] = []
    if folds:
        flagged = find_label_issues(
            labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1
        )
        for i in flagged[:SUSPECTS_LISTED]:
            guess = int(probs[i].argmax())
            suspects.append(
                {
                    "id": images[i].id,
                    "filename": images[i].filename,
                    "label": images[i].label,
                    "label_score": round(float(probs[i, labels[i]]), 4),
                    "guess": classes[guess],
                    "guess_score": round(float(probs[i, guess]), 4),
                }
            )
        flagged_count = len(flagged)
    else:
        flagged_count = 0
    duplicates = near_duplicates(perceptual_hashes(images), images)
    hashed = time.perf_counter()
    # Every image by the probability of its given label, lowest first (the flagged ones
    # are among the first): what a reviewer would look at after the suspects.
    given = probs[np.arange(len(labels)), labels]
    doubted = [images[i].id for i in np.argsort(given, kind="stable")[: 2 * SUSPECTS_LISTED]]
    guesses = probs.argmax(axis=1)
    confused: dict[tuple[int, int], int] = {}
    for given, guess in zip(labels, guesses, strict=True):
        if folds and given != guess:
            confused[(int(given), int(guess))] = confused.get((int(given), int(guess)), 0) + 1
    per_class = np.bincount(labels, minlength=len(classes))
    return {
        "images": len(images),
        "classes": classes,
        "method": {
            "predictions": f"out-of-fold: {folds}-fold logistic regression on the model's features"
            if folds
            else "none: a class has fewer than 2 images",
            "ranking": "cleanlab find_label_issues, by self-confidence (lowest first)",
            "duplicates": f"perceptual hash (pHash), at most {NEAR_DUPLICATE_BITS} of 64 bits"
            " apart",
        },
        "out_of_fold_accuracy": round(float((guesses == labels).mean()), 4) if folds else None,
        "suspects_found": flagged_count,
        "suspects": suspects,
        "least_confident": doubted if folds else [],
        "duplicates": duplicates[:SUSPECTS_LISTED],
        "duplicates_found": len(duplicates),
        "confused": [
            {
                "label": classes[a],
                "guess": classes[b],
                "count": n,
                "share": round(n / int(per_class[a]), 4),
            }
            for (a, b), n in sorted(confused.items(), key=lambda kv: -kv[1])[:20]
        ],
        "seconds": {
            "features": round(embedded - started, 2),
            "out_of_fold": round(fitted - embedded, 2),
            "duplicates": round(hashed - fitted, 2),
        },
    }


def stored_version_health(
    model_path: Any, image_size: int, datasets: Any, name: str, version: int
) -> dict[str, Any]:
    """The report of stored dataset version ``name``:``version`` from the Keras model at
    ``model_path`` (a version of a model trained on that dataset)."""
    import keras

    manifest = datasets.manifest(name, version)
    images = [
        HealthImage(
            image_id,
            record["label"],
            record["filename"],
            functools.partial(datasets.image_bytes, name, image_id),
        )
        for image_id, record in sorted(manifest["images"].items())
    ]
    model = keras.models.load_model(model_path, compile=False)
    report = label_health(model, images, list(manifest["classes"]), image_size)
    report["dataset"] = {"name": name, "version": version}
    return report
