import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving.openvino_backend import OpenVINOPredictor, ir_path
from app.serving.predictor import KerasPredictor, resolve_backend
from tests.helpers import image_bytes, pattern_image

pytest.importorskip("openvino")


def test_auto_picks_openvino_when_installed():
    assert resolve_backend("auto") == "openvino"
    assert resolve_backend("keras") == "keras"


@pytest.mark.parametrize(
    "precision",
    ["f32", pytest.param("bf16", marks=pytest.mark.slow)],  # 6 s each
)
def test_openvino_matches_keras_on_the_same_pixels(registry, precision):
    path = registry.model_path("toy", 1)
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    keras_p = KerasPredictor(path, 32)
    keras_p.load()
    ov_p = OpenVINOPredictor(path, 32, precision)
    ov_p.load()
    expected, got = keras_p.predict(x), ov_p.predict(x)
    assert got.shape == expected.shape == (8, 2)
    tolerance = 1e-4 if precision == "f32" else 2e-2
    assert np.abs(got - expected).max() < tolerance


def test_openvino_gives_the_features_keras_gives(registry):
    """The nearest-neighbour "unknown" score takes the classifier's features from either
    runtime (`app.serving.features`): the same, and the probabilities unchanged."""
    path = registry.model_path("toy", 1)
    x = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    keras_p = KerasPredictor(path, 32, features=True)
    keras_p.load()
    ov_p = OpenVINOPredictor(path, 32, "f32", features=True, cache=False)
    ov_p.load()
    (keras_probs, keras_features), (ov_probs, ov_features) = (
        keras_p.predict_features(x),
        ov_p.predict_features(x),
    )
    assert ov_features.shape == keras_features.shape == (8, 8)  # the pooled convolution
    assert np.abs(ov_features - keras_features).max() < 1e-4
    assert np.abs(ov_probs - keras_probs).max() < 1e-4
    assert np.abs(ov_p.predict(x) - keras_p.predict(x)).max() < 1e-4


def test_ir_is_converted_once_and_cached_beside_the_version(registry, settings_for):
    xml = ir_path(registry.model_path("toy", 1))
    assert not xml.exists()
    png = image_bytes(pattern_image("checks", 40), "PNG")
    with TestClient(create_app(settings_for(backend="openvino"))) as c:
        assert c.get("/models/toy").json()["backend"] == "openvino"
        r = c.post("/predict", files={"file": ("a.png", png)})
        assert r.status_code == 200 and r.json()["version"] == 1
    assert xml.exists() and xml.with_suffix(".bin").exists()
    stamp = xml.stat().st_mtime_ns
    with TestClient(create_app(settings_for(backend="openvino"))) as c:
        assert c.post("/predict", files={"file": ("a.png", png)}).status_code == 200
    assert xml.stat().st_mtime_ns == stamp, "the IR was converted again"
    # The registry still lists exactly one version.
    assert registry.versions("toy") == [1]


def _batches_for(client: TestClient, images: int) -> float:
    png = image_bytes(pattern_image("checks", 40), "PNG")
    files = [("file", (f"{i}.png", png)) for i in range(images)]
    assert client.post("/predict", files=files).status_code == 200
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('convserve_batch_size_count{model="toy",version="1"}'):
            return float(line.split()[-1])
    raise AssertionError("no batch-size histogram for toy")


@pytest.mark.parametrize(
    ("backend", "max_batch", "batches"),
    [
        ("openvino", None, 3),  # OpenVINO's own batch size: 4
        ("keras", None, 1),  # Keras': 16
        pytest.param("openvino", 16, 1, marks=pytest.mark.slow),  # the setting wins (6 s)
    ],
)
def test_batch_size_defaults_to_the_backends_best(
    registry, settings_for, backend, max_batch, batches
):
    settings = settings_for(backend=backend, max_batch_size=max_batch)
    with TestClient(create_app(settings)) as c:
        assert _batches_for(c, 10) == batches
