"""Classification metrics: accuracy, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Metrics of integer predictions against integer labels.

    The confusion matrix has true classes as rows and predicted classes as columns. A class
    with no predictions (or no examples) gets precision (or recall) 0.
    """
    n = len(class_names)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    hits = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros(n), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    total = int(confusion.sum())
    return {
        "accuracy": float(hits.sum() / total) if total else 0.0,
        "images": total,
        "class_names": list(class_names),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 6),
                "recall": round(float(recall[i]), 6),
                "f1": round(float(f1[i]), 6),
                "support": int(actual[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion.tolist(),
    }


def predict_dataset(model: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer labels, top-1 predictions and their probabilities over a dataset of
    `(images, labels)` batches, in the dataset's order."""
    y_true, probs = predict_probabilities(model, dataset)
    return y_true, probs.argmax(axis=-1), probs.max(axis=-1)


def predict_probabilities(model: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Integer labels and every class's probability (``[N, C]``) over a dataset of
    `(images, labels)` batches, in the dataset's order."""
    truths, rows = [np.zeros(0, dtype=np.int64)], []
    for images, labels in dataset:
        rows.append(np.asarray(model.predict_on_batch(images), dtype=np.float32))
        truths.append(np.asarray(labels, dtype=np.int64))
    probs = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(truths), probs


# Validation images kept with a version, per (true, predicted) cell of its confusion matrix.
SAMPLES_PER_CELL = 24
SAMPLE_SIZE = 96


def write_validation_samples(
    folder: Path,
    files: list[str],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    scores: np.ndarray,
    sources: dict[str, str],
) -> int:
    """Keep small JPEG thumbnails of the validation images with a version, so the console
    can show the images behind each confusion-matrix cell: up to `SAMPLES_PER_CELL` per
    cell, the least confident first (the ones worth looking at). Returns how many."""
    from PIL import Image

    from app.storage.registry import SAMPLES_DIR, SAMPLES_FILE

    out = folder / SAMPLES_DIR
    out.mkdir()
    cells: dict[tuple[int, int], list[int]] = {}
    for i in np.argsort(scores, kind="stable"):
        cell = cells.setdefault((int(y_true[i]), int(y_pred[i])), [])
        if len(cell) < SAMPLES_PER_CELL:
            cell.append(int(i))
    kept = []
    for (true, pred), indices in sorted(cells.items()):
        for n, i in enumerate(indices):
            name = f"{true}-{pred}-{n}.jpg"
            with Image.open(files[i]) as src:
                thumb = src.convert("RGB")
            thumb.thumbnail((SAMPLE_SIZE, SAMPLE_SIZE))
            thumb.save(out / name, format="JPEG", quality=85)
            prepared = Path(files[i])
            key = f"{prepared.parent.name}/{prepared.name}"
            kept.append(
                {
                    "file": name,
                    "true": true,
                    "predicted": pred,
                    "score": round(float(scores[i]), 6),
                    "source": sources.get(key),
                }
            )
    (folder / SAMPLES_FILE).write_text(
        json.dumps({"per_cell": SAMPLES_PER_CELL, "size": SAMPLE_SIZE, "images": kept})
    )
    return len(kept)


def evaluate_directory(
    registry: Any, name: str, version: int, data_dir: Any, workspace: Any
) -> dict[str, Any]:
    """Score a registry version on a folder of class folders.

    The folders are matched to the model's classes by name; a folder the model does not
    know is an error (``unknown_class``).
    """
    from app.data.datasets import DatasetError, load_directory, prepare_dataset
    from app.nets.transfer import load_classifier

    meta = registry.metadata(name, version)
    model_classes: list[str] = list(meta["class_names"])
    size = int(meta["image_size"])
    summary = prepare_dataset(
        data_dir, workspace / "images", size, validation_split=0, min_images=1
    )
    unknown = [c for c in summary.class_names if c not in model_classes]
    if unknown:
        raise DatasetError(
            "unknown_class",
            f"the model {name}:{version} has no class named {', '.join(map(repr, unknown))}",
        )
    to_model = np.array([model_classes.index(c) for c in summary.class_names])
    model = load_classifier(registry.model_path(name, version))
    dataset = load_directory(workspace / "images", len(summary.class_names), size)
    y_true, y_pred, _ = predict_dataset(model, dataset)
    result = classification_metrics(to_model[y_true], y_pred, model_classes)
    result.update(model=name, version=version, skipped=[s.__dict__ for s in summary.skipped])
    return result
