""" "Unknown" from the network's features: how near an image's features are to those of
the nearest image the version trained on (deep nearest neighbours; Sun et al., 2022,
"Out-of-distribution detection with deep nearest neighbors").

The features are what the classifier's last layer takes (the pooled features of a
transfer classifier), L2-normalised; the score is the cosine similarity to the nearest
training image's (k = 1). Each version keeps its training images' features
(``features.npz``, float16, at most `MAX_BANK_IMAGES`) and the similarity that keeps
``keep_share`` of its validation images; serving answers unknown below it.

Why not the top score alone: trained on five SIGNS classes, the calibrated top score
turned away about a quarter of photos of the sixth sign at the default keep share, and
few flat-colour or noise images; the nearest-neighbour similarity turned away about half
of the sixth sign and every generated image (docs/benchmarks.md, "Unknown").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.serving.calibration import keep_threshold

BANK_FILE = "features.npz"
# Enough to cover each class's looks while the search stays cheap: it reads the whole bank
# once per batch. Beside MobileNetV2 on OpenVINO (11.5-12.9 ms a batch of 4 here) it added
# 0.4-1.3 ms for 576 images and 1.5-2 ms for 2,000 (docs/benchmarks.md, "Unknown").
MAX_BANK_IMAGES = 1000
SCORE = "nearest"  # the abstention record's `method` for this score
SCORE_TEXT = "cosine similarity of its features to the nearest training image's"
CHUNK = 256  # images per product against the bank (bounds the memory of a large batch)


@functools.cache
def _blas() -> Any:
    """The process's BLAS libraries (numpy's), found once."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def classifier_layer(model: Any) -> Any:
    """The classifier's last layer that has weights (the ``Dense`` that makes the scores;
    its input is the features), looked for inside a network that ends in its own dense
    layers (LeNet-5, AlexNet or VGG-16 trained from scratch)."""
    import keras

    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            return classifier_layer(layer)
        if layer.weights:
            return layer
    raise ValueError("the model has no layer with weights")


def feature_model(model: Any) -> Any:
    """A Keras model with two outputs: the classifier's probabilities and its features."""
    import keras

    last = next(layer for layer in reversed(model.layers) if layer.weights)
    if not isinstance(last, keras.Model):
        return keras.Model(model.inputs, [model.outputs[0], last.input])
    # The classifier is inside the last network: the chain is rebuilt up to it (sharing
    # the weights), which then gives both.
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    x = inputs
    for layer in model.layers[1:]:
        if layer is last:
            return keras.Model(inputs, feature_model(last)(x))
        x = layer(x)
    raise ValueError("the network with the classifier is not the model's last layer")


def normalised(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


@dataclass
class FeatureBank:
    """The normalised features of a version's training images."""

    features: np.ndarray  # (n, d) float32, each row of length 1
    layer: str  # the layer whose input they are

    @classmethod
    def of(cls, features: np.ndarray, layer: str) -> FeatureBank:
        return cls(normalised(features), layer)

    def nearest(self, features: np.ndarray) -> np.ndarray:
        """Per image, the cosine similarity of its features to the nearest in the bank.

        The product runs on one BLAS thread: OpenBLAS's other threads keep spinning for a
        while after a product, and beside OpenVINO's they doubled its next batch's time
        (11.7 to 25 ms for MobileNetV2's batch of 4 here)."""
        x = normalised(features)
        out = np.empty(len(x), dtype=np.float32)
        with _blas().limit(limits=1, user_api="blas"):
            for i in range(0, len(x), CHUNK):
                out[i : i + CHUNK] = (x[i : i + CHUNK] @ self.features.T).max(axis=1)
        return out

    def save(self, folder: Path) -> Path:
        path = Path(folder) / BANK_FILE
        np.savez_compressed(path, features=self.features.astype(np.float16), layer=self.layer)
        return path

    @classmethod
    def read(cls, folder: Path) -> FeatureBank | None:
        """The version's bank, or None when it has none.

        Raises:
            ValueError: the file is damaged.
        """
        from app.data.heldout import read_arrays

        arrays = read_arrays(Path(folder) / BANK_FILE, "features", "layer")
        if arrays is None:
            return None
        features, layer = arrays
        return cls.of(features, str(layer))  # of length 1 again after float16


def features_of(model: Any, batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities and features of batches of raw pixels, through `feature_model`."""
    both = feature_model(model)
    probs, feats = [], []
    for batch in batches:
        p, f = both.predict_on_batch(np.asarray(batch, dtype=np.float32))
        probs.append(np.asarray(p, dtype=np.float32))
        feats.append(np.asarray(f, dtype=np.float32).reshape(len(f), -1))
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probs), np.concatenate(feats)


def nearest_record(
    bank: FeatureBank, validation_features: np.ndarray, keep_share: float
) -> dict[str, Any]:
    """The abstention record of the nearest-neighbour score: its threshold on the
    validation images' similarity to the bank, and the share it keeps."""
    similarity = bank.nearest(validation_features)
    threshold = keep_threshold(similarity, keep_share)
    kept = float((similarity >= threshold).mean()) if len(similarity) else 1.0
    return {
        "method": SCORE,
        "score": SCORE_TEXT,
        "threshold": round(threshold, 6),
        "keep_share": keep_share,
        "kept_share": round(kept, 4),
        "layer": bank.layer,
        "bank_images": len(bank.features),
    }


def with_similarity(
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], bank: FeatureBank
) -> Callable[[np.ndarray], np.ndarray]:
    """A batch function for the batcher: the probabilities with each image's similarity to
    the bank as one more column (`split_similarity` takes it off again)."""

    def run(batch: np.ndarray) -> np.ndarray:
        probs, feats = predict(batch)
        return np.concatenate([probs, bank.nearest(feats)[:, None]], axis=1)

    return run


def split_similarity(rows: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """Rows made by `with_similarity`: the probabilities and the similarities."""
    return [r[:-1] for r in rows], [float(r[-1]) for r in rows]
