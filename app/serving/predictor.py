"""Servables: one loaded model version behind a small interface.

A predictor takes a batch of raw pixels `(n, S, S, 3)` (`uint8` or `float32`) and returns
class probabilities `(n, classes)` as `float32`. Built with ``features=True`` it also gives
the features the classifier's last layer takes (`predict_features`), which the
nearest-neighbour "unknown" score needs (`app.serving.features`). Backends (Keras, a faster
runtime) plug in behind the same interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Predictor(Protocol):
    backend: str
    precision: str  # the arithmetic inference runs in: "f32", "bf16" or "int8"
    image_size: int
    # Batches the runtime can usefully run at once (the batcher keeps this many in flight).
    parallelism: int
    # The largest batch worth forming when CONVSERVE_MAX_BATCH_SIZE is not set.
    batch_size: int

    def load(self) -> None: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def predict_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class KerasPredictor:
    """A saved `.keras` classifier run by TensorFlow.

    The forward pass is one `tf.function` traced once for any batch size, which avoids
    `Model.predict`'s per-call set-up (several milliseconds, more than a small batch).
    """

    backend = "keras"
    precision = "f32"
    # TensorFlow spreads one batch over every core, but between two batches (stacking the
    # next, answering the last) the cores idle; a second batch in flight fills those gaps
    # (4-5% more images/s at concurrency 32 for both bootstrap models, measured in bench/).
    parallelism = 2
    # TensorFlow's fixed cost per call (about 2 ms) wants large batches: ResNet-50 runs at
    # 34 img/s at batch 1 and 47 at batch 16 here.
    batch_size = 16

    def __init__(self, model_path: Path, image_size: int, features: bool = False) -> None:
        self.model_path = Path(model_path)
        self.image_size = image_size
        self.features = features
        self._forward = None

    def load(self) -> None:
        import tensorflow as tf

        from app.nets.transfer import load_classifier
        from app.serving.features import feature_model

        model = load_classifier(self.model_path)
        run = feature_model(model) if self.features else model
        spec = tf.TensorSpec((None, self.image_size, self.image_size, 3), tf.float32)

        @tf.function(input_signature=[spec])
        def forward(x: tf.Tensor) -> tf.Tensor:
            return run(x, training=False)

        self._model = model
        self._forward = forward

    def _run(self, batch: np.ndarray) -> Any:
        if self._forward is None:
            raise RuntimeError("load() the predictor first")
        return self._forward(np.asarray(batch, dtype=np.float32))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self._run(batch)
        return np.asarray(out[0] if self.features else out, dtype=np.float32)

    def predict_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.features:
            raise RuntimeError("this predictor was built without features")
        probs, features = self._run(batch)
        return np.asarray(probs, dtype=np.float32), np.asarray(features, dtype=np.float32)


def warm_up(predictor: Predictor, max_batch_size: int) -> None:
    """Run the batch sizes the service will see first, so no request pays for tracing and
    memory allocation."""
    size = predictor.image_size
    for n in sorted({1, max_batch_size}):
        predictor.predict(np.zeros((n, size, size, 3), dtype=np.uint8))


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """``auto`` means OpenVINO where it is installed, else Keras."""
    if backend == "auto":
        return "openvino" if openvino_available() else "keras"
    if backend == "openvino" and not openvino_available():
        raise ValueError("CONVSERVE_BACKEND=openvino, but the openvino package is not installed")
    return backend


def make_predictor(
    model_path: Path,
    image_size: int,
    backend: str,
    precision: str = "f32",
    features: bool = False,
) -> Predictor:
    """The predictor for ``backend`` (``keras``, ``openvino``, or ``auto``) at
    ``precision`` (``f32``, ``bf16`` or ``int8``; Keras always runs f32). int8 quantizes a
    version that has no int8 model yet with its calibration images (`app.serving.precision`).
    ``features``: it also gives the classifier's features (`Predictor.predict_features`)."""
    backend = resolve_backend(backend)
    if backend == "openvino":
        from app.data.heldout import read_heldout
        from app.serving.openvino_backend import OpenVINOPredictor

        def calibration() -> np.ndarray | None:
            try:
                heldout = read_heldout(Path(model_path).parent)
            except ValueError:  # damaged: int8 cannot be made, f32 serves
                return None
            return None if heldout is None else heldout.calibration

        return OpenVINOPredictor(model_path, image_size, precision, calibration, features=features)
    return KerasPredictor(model_path, image_size, features)
