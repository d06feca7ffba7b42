"""A fake model for the route tests where loading Keras is not the point: a registry
version with no network in it, served by `FakePredictor`, which answers in microseconds
and by a rule a test can predict (the brighter the image, the higher the class)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from app.serving.features import FeatureBank
from app.storage.registry import MODEL_FILE, ModelRegistry

FAKE_FILE = "fake.json"  # beside the model file: marks a fake version, with its classes


class FakePredictor:
    backend = "fake"
    precision = "f32"
    parallelism = 1
    batch_size = 8

    def __init__(self, model_path: Path, image_size: int, features: bool = False) -> None:
        self.image_size = image_size
        self.features = features
        spec = json.loads((Path(model_path).parent / FAKE_FILE).read_text())
        self.classes = spec["classes"]
        self.fail = spec.get("fail", False)  # fails every batch of images, on purpose
        self.delay = spec.get("delay", 0.0)  # seconds added to every batch, on purpose

    def load(self) -> None:
        pass

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class ``k`` of ``n`` for an image whose mean brightness is in the k-th n-th of
        0-255, with a score of 0.9 (the rest shared by the others)."""
        if self.fail and batch.any():  # warm-up (all zeros) passes, so it loads
            raise RuntimeError("this fake version fails on purpose")
        if self.delay and batch.any():
            time.sleep(self.delay)
        n = len(self.classes)
        brightness = batch.reshape(len(batch), -1).mean(axis=1)
        chosen = np.minimum((brightness / 256 * n).astype(int), n - 1)
        rows = np.full((len(batch), n), 0.1 / max(n - 1, 1), dtype=np.float32)
        rows[np.arange(len(batch)), chosen] = 0.9 if n > 1 else 1.0
        return rows

    def predict_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The answer, and as features the brightness and its complement (so a dark and a
        bright image are far apart)."""
        light = batch.reshape(len(batch), -1).mean(axis=1) / 255
        return self.predict(batch), np.stack([light, 1 - light], axis=1).astype(np.float32)


def write_fake_version(
    registry: ModelRegistry,
    name: str,
    classes: list[str],
    size: int = 32,
    fail: bool = False,
    bank: np.ndarray | None = None,
    delay: float = 0.0,
    **metadata: object,
) -> int:
    """A registry version that `FakePredictor` serves (see the ``fake_models`` fixture);
    ``fail``: every batch fails; ``delay``: every batch takes this many seconds more;
    ``bank``: the features of its training images (`FakePredictor.predict_features`)."""

    def save(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(b"not a network: served by tests.fakes")
        (folder / FAKE_FILE).write_text(
            json.dumps({"classes": classes, "fail": fail, "delay": delay})
        )
        if bank is not None:
            FeatureBank.of(bank, "fake").save(folder)

    meta = {
        "source": "test",
        "base": "fake",
        "architecture": "fake",
        "class_names": classes,
        "image_size": size,
        "metrics": {"accuracy": 0.5},
        **metadata,
    }
    return registry.write_version(name, save, meta)


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve fake versions with `FakePredictor`, and the others as usual."""
    import app.serving.loader as loader

    real = loader.make_predictor

    def make_predictor(model_path, image_size, backend, precision="f32", features=False):
        if (Path(model_path).parent / FAKE_FILE).exists():
            return FakePredictor(model_path, image_size, features)
        return real(model_path, image_size, backend, precision, features)

    monkeypatch.setattr(loader, "make_predictor", make_predictor)
