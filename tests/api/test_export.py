"""Export of a version: each format loaded back with its own runtime predicts what the
service serves for the same photo."""

import io
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.data.images import load_image
from app.main import create_app
from app.nets.transfer import BASE_LAYER, CaffePreprocess, build_augmentation
from app.storage.registry import MODEL_FILE, ModelRegistry
from tests.helpers import pattern_image

KEY = "export-key"
CLASSES = ["checks", "stripes", "plain"]
SIZE = 32


def _classifier() -> keras.Model:
    """Raw pixels -> augmentation -> one of our own layers -> a small CNN, as training
    writes them (a deep base would only make every conversion slower)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = build_augmentation()(inputs)
    x = CaffePreprocess(name="preprocess")(x)
    base_in = keras.Input((SIZE, SIZE, 3))
    y = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(base_in)
    y = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(y)
    base = keras.Model(base_in, y, name=BASE_LAYER)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    init = keras.initializers.RandomNormal(0, 0.05)
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=init)(x)
    return keras.Model(inputs, outputs, name="exported")


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("export")
    registry = ModelRegistry(root / "models")
    model = _classifier()
    meta = {
        "base": "toy",
        "architecture": "toy",
        "class_names": CLASSES,
        "image_size": SIZE,
        "metrics": {"accuracy": 0.75},
        "params": {"epochs": 3},
    }
    registry.write_version("pets", lambda folder: model.save(folder / MODEL_FILE), meta)
    registry.set_active("pets", 1)
    from tests.helpers import toy_settings

    settings = toy_settings(
        root, served_models=["pets"], default_model="pets", api_key=KEY, backend="keras"
    )
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        client.registry = registry  # type: ignore[attr-defined]
        yield client


def _photo() -> bytes:
    buf = io.BytesIO()
    pattern_image("checks", 50, seed=4).save(buf, format="JPEG")
    return buf.getvalue()


def _served(client: TestClient) -> np.ndarray:
    r = client.post("/predict?top_k=3", files={"file": ("p.jpg", _photo(), "image/jpeg")})
    assert r.status_code == 200, r.text
    scores = {label["index"]: label["score"] for label in r.json()["predictions"][0]["top"]}
    return np.array([scores[i] for i in range(3)])


def _pixels() -> np.ndarray:
    return load_image(_photo(), SIZE).astype("float32")[None]


def _unpack(client: TestClient, fmt: str, tmp_path: Path) -> Path:
    r = client.get(f"/models/pets/versions/1/export?format={fmt}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert f'filename="pets-v1-{fmt}.zip"' in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        archive.extractall(tmp_path)
    folder = tmp_path / f"pets-v1-{fmt}"
    assert (folder / "labels.txt").read_text().splitlines() == CLASSES
    readme = (folder / "README.md").read_text()
    assert f"`float32`, shape `(batch, {SIZE}, {SIZE}, 3)`: RGB pixels in [0, 255]" in readme
    return folder


def test_keras_export_loads_with_keras_alone(service, tmp_path):
    folder = _unpack(service, "keras", tmp_path)
    pixels, out = tmp_path / "pixels.npy", tmp_path / "out.npy"
    np.save(pixels, _pixels())
    # A fresh interpreter that never imports convserve: the archive is all it needs.
    script = (
        "import sys, numpy as np, custom_layers, keras\n"
        "model = keras.saving.load_model('model.keras', compile=False)\n"
        f"np.save({str(out)!r}, model.predict(np.load({str(pixels)!r}), verbose=0))\n"
        "assert not any(m == 'app' or m.startswith('app.') for m in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_allclose(np.load(out)[0], _served(service), atol=1e-4)
    # The archive has no augmentation left in it.
    assert "augmentation" not in (folder / "model.keras").read_bytes().decode("latin-1")


def _run_savedmodel(folder: Path, pixels: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(folder / "saved_model"))  # kept: it owns the variables
    return loaded.serve(pixels).numpy()


def _run_tflite(folder: Path, pixels: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(folder / "model.tflite"))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, pixels.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, pixels)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _run_onnx(folder: Path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"))
    return session.run(None, {session.get_inputs()[0].name: pixels})[0]


def _run_openvino(folder: Path, pixels: np.ndarray) -> np.ndarray:
    import openvino as ov

    # f32 as the service computes; OpenVINO would pick bf16 on a CPU that has it.
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    return ov.Core().compile_model(str(folder / "model.xml"), "CPU", config)(pixels)[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, run",
    [
        ("savedmodel", _run_savedmodel),
        ("tflite", _run_tflite),
        ("onnx", _run_onnx),
        ("openvino", _run_openvino),
    ],
)
def test_each_format_predicts_what_the_service_serves(service, tmp_path, fmt, run):
    folder = _unpack(service, fmt, tmp_path)
    got = np.asarray(run(folder, _pixels()))
    assert got.shape == (1, 3)
    np.testing.assert_allclose(got[0], _served(service), atol=1e-4)


def test_second_download_is_the_kept_archive(service, tmp_path):
    first = service.get("/models/pets/versions/1/export?format=keras")
    kept = service.registry.version_dir("pets", 1) / "exports" / "keras.zip"
    stamp = kept.stat().st_mtime_ns
    second = service.get("/models/pets/versions/1/export?format=keras")
    assert first.content == second.content and kept.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/models/pets/versions/9/export", 404, "version_not_found"),
        ("/models/nobody/versions/1/export", 404, "version_not_found"),
        ("/models/pets/versions/1/export?format=pickle", 422, "invalid_parameters"),
        ("/models/pets/versions/0/export", 422, "invalid_parameters"),
    ],
)
def test_bad_exports_get_clear_errors(service, path, status, code):
    r = service.get(path)
    assert (r.status_code, r.json()["code"]) == (status, code)


def test_export_needs_the_key(service):
    r = service.get("/models/pets/versions/1/export", headers={"Authorization": "Bearer wrong"})
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")


def test_a_missing_converter_is_a_501_that_names_the_package(service, monkeypatch):
    # Hide tf2onnx as an environment without it would: its import fails (and Keras has
    # not kept the module from an earlier export).
    from keras.src.utils import module_utils

    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    monkeypatch.setattr(module_utils.tf2onnx, "module", None)
    (service.registry.version_dir("pets", 1) / "exports" / "onnx.zip").unlink(missing_ok=True)
    r = service.get("/models/pets/versions/1/export?format=onnx")
    assert (r.status_code, r.json()["code"]) == (501, "export_unavailable")
    assert "tf2onnx" in r.json()["detail"]


def test_the_readme_says_what_serving_adds_to_the_network():
    from app.export import _trust_lines

    assert _trust_lines({}) == []
    nearest = {
        "calibration": {"temperature": 1.5},
        "abstention": {"method": "nearest", "threshold": 0.83},
    }
    text = _trust_lines(nearest)[0]
    assert "temperature 1.5: `softmax(log(p) / 1.5)`" in text
    assert "cosine similarity under 0.83" in text
    text = _trust_lines({"abstention": {"threshold": 0.6}})[0]
    assert "below a calibrated top score of 0.6" in text
