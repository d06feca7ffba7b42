"""A registry version as a file other runtimes load: Keras, TensorFlow SavedModel, TFLite
(LiteRT), ONNX or OpenVINO IR, zipped with ``labels.txt`` and a README.

Every format holds the classifier without its augmentation layers and takes what serving
takes: `float32` RGB pixels in [0, 255], `(batch, S, S, 3)`, after the image is resized
(squashed) to S x S. Conversions use Keras' own exporters (``Model.export``) and the
OpenVINO IR serving already keeps beside the version. An archive is built once per version
and format and kept in the version's folder (versions never change), so later downloads
are a file read. Conversions run one at a time: they are heavy, and the process also
serves predictions.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.errors import ConvserveError, disk_error, writing_to
from app.storage.registry import ModelRegistry

Format = Literal["keras", "savedmodel", "tflite", "onnx", "openvino"]
FORMATS: tuple[Format, ...] = ("keras", "savedmodel", "tflite", "onnx", "openvino")
EXPORTS_DIR = "exports"
INPUT_NAME = "image"

_one_at_a_time = threading.Lock()


class ExportError(ConvserveError):
    status = 422


def archive_path(registry: ModelRegistry, name: str, version: int, fmt: Format) -> Path:
    return registry.version_dir(name, version) / EXPORTS_DIR / f"{fmt}.zip"


def export_version(registry: ModelRegistry, name: str, version: int, fmt: Format) -> Path:
    """The zip archive of ``name`` version ``version`` in ``fmt`` (built on first use).

    Raises:
        RegistryError: no such model or version (404).
        ExportError: the converter is not installed (``export_unavailable``, 501) or
            cannot convert this network (``export_failed``, 422).
    """
    meta = registry.metadata(name, version)  # 404 for a missing version
    target = archive_path(registry, name, version, fmt)
    if target.exists():
        return target
    with _one_at_a_time, writing_to("the model registry"):
        if target.exists():  # built while this request waited
            return target
        target.parent.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="convserve-export-") as scratch:
            folder = Path(scratch) / f"{name}-v{version}-{fmt}"
            folder.mkdir()
            files = _convert(registry.model_path(name, version), fmt, folder)
            (folder / "labels.txt").write_text("".join(f"{c}\n" for c in meta["class_names"]))
            (folder / "README.md").write_text(_readme(name, version, fmt, meta, files))
            partial = target.with_name(f".{fmt}-{uuid.uuid4().hex}.zip")
            try:
                _zip(folder, partial)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    return target


def _convert(model_path: Path, fmt: Format, folder: Path) -> list[str]:
    """Write the model in ``fmt`` into ``folder``; the names written."""
    if fmt == "openvino":
        from app.serving.openvino_backend import convert_to_ir

        ir = _guarded(fmt, lambda: convert_to_ir(model_path))
        for part in (ir, ir.with_suffix(".bin")):
            shutil.copy(part, folder / part.name)
        return [ir.name, ir.with_suffix(".bin").name]

    from app.nets.transfer import inference_model, load_classifier

    model = inference_model(load_classifier(model_path))
    # Keras' ONNX exporter wants a model that has run once (the rebuilt chain has not).
    model(np.zeros((1, *model.input_shape[1:]), "float32"))
    if fmt == "keras":
        model.save(folder / "model.keras")
        (folder / "custom_layers.py").write_text(_custom_layers_source())
        return ["model.keras", "custom_layers.py"]
    if fmt == "savedmodel":
        _guarded(fmt, lambda: model.export(str(folder / "saved_model"), verbose=False))
        return ["saved_model/"]
    if fmt == "tflite":
        _guarded(fmt, lambda: model.export(str(folder / "model.tflite"), "litert", verbose=False))
        return ["model.tflite"]
    _guarded(fmt, lambda: model.export(str(folder / "model.onnx"), "onnx", verbose=False))
    return ["model.onnx"]


# The Python package each format's converter needs beyond TensorFlow and Keras.
_CONVERTER = {"onnx": "tf2onnx", "openvino": "openvino"}


def _guarded(fmt: Format, convert: Any) -> Any:
    try:
        return convert()
    except ImportError as exc:
        package = _CONVERTER.get(fmt, getattr(exc, "name", None) or "a converter")
        raise ExportError(
            "export_unavailable",
            f"exporting to {fmt} needs the {package} package, which this service does not"
            f" have (pip install {package})",
            501,
        ) from exc
    except Exception as exc:
        refused = disk_error(exc, "the export's scratch folder")
        if refused is not None:
            raise refused from exc
        raise ExportError(
            "export_failed", f"this network cannot be converted to {fmt}: {exc}"
        ) from exc


def _custom_layers_source() -> str:
    """Our layers a saved Keras model may use, as a module that needs only Keras."""
    from app.nets.common import LocalResponseNormalization
    from app.nets.transfer import CaffePreprocess

    parts = [
        '"""convserve\'s own Keras layers: import this module before loading model.keras."""',
        "",
        "import keras",
        "from keras import layers",
    ]
    for cls in (CaffePreprocess, LocalResponseNormalization):
        parts += ["", "", inspect.getsource(cls).rstrip()]
    return "\n".join(parts) + "\n"


_LOADING = {
    "keras": """import custom_layers  # registers convserve's layers (this folder on sys.path)
import keras
model = keras.saving.load_model("model.keras", compile=False)
probabilities = model.predict(pixels)""",
    "savedmodel": """import tensorflow as tf
model = tf.saved_model.load("saved_model")
probabilities = model.serve(pixels).numpy()  # also the "serving_default" signature""",
    "tflite": """from ai_edge_litert.interpreter import Interpreter  # or tf.lite.Interpreter
interpreter = Interpreter(model_path="model.tflite")
index = interpreter.get_input_details()[0]["index"]
interpreter.resize_tensor_input(index, pixels.shape)
interpreter.allocate_tensors()
interpreter.set_tensor(index, pixels)
interpreter.invoke()
probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])""",
    "onnx": """import onnxruntime as ort
session = ort.InferenceSession("model.onnx")
probabilities = session.run(None, {session.get_inputs()[0].name: pixels})[0]""",
    "openvino": """import openvino as ov
# f32 computes what convserve serves by default; on CPUs with bf16 OpenVINO picks bf16
# unless told, about twice as fast and a little different.
compiled = ov.Core().compile_model("model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
probabilities = compiled(pixels)[0]""",
}


def _trust_lines(meta: dict[str, Any]) -> list[str]:
    """What convserve does beyond the network: its calibration and its "unknown" rule."""
    lines = []
    temperature = (meta.get("calibration") or {}).get("temperature")
    if temperature is not None:
        lines.append(
            "These are the network's own probabilities. convserve serves them calibrated at"
            f" temperature {temperature}: `softmax(log(p) / {temperature})`."
        )
    abstention = meta.get("abstention") or {}
    if abstention.get("method") == "nearest":
        lines.append(
            'convserve also answers "unknown" when the photo\'s features (the input of the'
            " last dense layer) have a cosine similarity under"
            f" {abstention['threshold']} to those of the nearest of its training images; the"
            " features are not an output of this file."
        )
    elif abstention.get("threshold") is not None:
        lines.append(
            'convserve also answers "unknown" below a calibrated top score of'
            f" {abstention['threshold']}."
        )
    return [" ".join(lines), ""] if lines else []


def _readme(name: str, version: int, fmt: Format, meta: dict[str, Any], files: list[str]) -> str:
    size = meta["image_size"]
    classes = meta["class_names"]
    metrics = meta.get("metrics") or {}
    accuracy = metrics.get("accuracy")
    lines = [
        f"# {name}, version {version} ({fmt})",
        "",
        f"Exported by convserve from the registry version created {meta.get('created_at', '?')}"
        f" (base: {meta.get('base') or meta.get('architecture') or '?'}"
        + (f", validation accuracy {accuracy:.4f}" if accuracy is not None else "")
        + ").",
        "",
        f"Files: {', '.join(f'`{f}`' for f in files)}, `labels.txt`, this README.",
        "",
        "## Input",
        "",
        f"`{INPUT_NAME}`: `float32`, shape `(batch, {size}, {size}, 3)`: RGB pixels in [0, 255]"
        " (not scaled; the model does its own preprocessing). convserve resizes each image to"
        f" {size} x {size} without keeping its aspect ratio (bilinear, antialiased), after"
        " applying its EXIF orientation and turning any mode into RGB.",
        "",
        "## Output",
        "",
        f"`(batch, {len(classes)})` class probabilities (softmax), in the order of"
        " `labels.txt` (line 1 is index 0).",
        "",
        *_trust_lines(meta),
        "## Loading it",
        "",
        "```python",
        "import numpy as np",
        "from PIL import Image",
        f'image = Image.open("photo.jpg").convert("RGB").resize(({size}, {size}))',
        'pixels = np.asarray(image, "float32")[None]',
        _LOADING[fmt],
        'labels = open("labels.txt").read().splitlines()',
        "print(labels[int(probabilities[0].argmax())])",
        "```",
        "",
    ]
    if meta.get("params"):
        lines += [
            "## Training parameters",
            "",
            "```json",
            json.dumps(meta["params"], indent=2),
            "```",
            "",
        ]
    return "\n".join(lines)


def _zip(folder: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, str(path.relative_to(folder.parent)))
