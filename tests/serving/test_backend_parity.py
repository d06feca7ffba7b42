"""Keras and OpenVINO agree on a model trained on real photos (slow; runs in CI)."""

import numpy as np
import pytest

from app.data.images import load_image
from app.serving.openvino_backend import OpenVINOPredictor
from app.serving.predictor import KerasPredictor
from app.storage.registry import ModelRegistry
from app.training.params import TrainParams
from app.training.trainer import Hooks, train
from tests.helpers import MOBILENET_WEIGHTS, SIGNS_DIR

pytest.importorskip("openvino")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SIGNS_DIR.is_dir() and MOBILENET_WEIGHTS.exists()),
        reason="needs ../shared/data/signs and the ImageNet MobileNetV2 weights",
    ),
]


def _batches(x, size=64):
    for i in range(0, len(x), size):
        yield x[i : i + size]


def test_openvino_agrees_with_keras_on_signs(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    params = TrainParams(image_size=128, epochs=2, fine_tune_epochs=1, seed=7)
    result = train(
        SIGNS_DIR,
        "signs",
        params,
        registry,
        tmp_path / "ws",
        weights=str(MOBILENET_WEIGHTS),
        hooks=Hooks(log=lambda _: None),
    )
    path = registry.model_path("signs", result.version)
    files = sorted(SIGNS_DIR.rglob("*.jpg"))
    x = np.stack([load_image(f.read_bytes(), 128) for f in files])

    keras_p = KerasPredictor(path, 128)
    keras_p.load()
    reference = np.concatenate([keras_p.predict(b) for b in _batches(x)])
    agreement = {}
    for precision in ("f32", "bf16"):
        ov_p = OpenVINOPredictor(path, 128, precision)
        ov_p.load()
        got = np.concatenate([ov_p.predict(b) for b in _batches(x)])
        agreement[precision] = float((got.argmax(1) == reference.argmax(1)).mean())
        worst = float(np.abs(got - reference).max())
        print(
            f"\n{precision}: top-1 agreement {agreement[precision]:.4f} on {len(files)} "
            f"photos, largest probability difference {worst:.4f}"
        )
    # f32 must agree: it is what a version serves when no lower precision passes its
    # study (app.serving.precision), and the reference the study measures against.
    assert agreement["f32"] >= 0.99
