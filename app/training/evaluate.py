"""Classification metrics: accuracy, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

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


def evaluate_model(model: Any, dataset: Any, class_names: list[str]) -> dict[str, Any]:
    """Run ``model`` over a dataset of `(images, int labels)` batches and score it."""
    y_true, y_pred = predict_dataset(model, dataset)
    return classification_metrics(y_true, y_pred, class_names)


def predict_dataset(model: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Integer labels and top-1 predictions over a dataset of `(images, labels)` batches."""
    truths, preds = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for images, labels in dataset:
        preds.append(np.argmax(np.asarray(model.predict_on_batch(images)), axis=-1))
        truths.append(np.asarray(labels, dtype=np.int64))
    return np.concatenate(truths), np.concatenate(preds)


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
    y_true, y_pred = predict_dataset(model, dataset)
    result = classification_metrics(to_model[y_true], y_pred, model_classes)
    result.update(model=name, version=version, skipped=[s.__dict__ for s in summary.skipped])
    return result
