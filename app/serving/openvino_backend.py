"""OpenVINO inference of a registry version.

The version's Keras model is converted to OpenVINO IR once (Keras SavedModel export, then
``openvino.convert_model``) and the IR is kept beside it in the registry
(``<version>/openvino/model.xml``), so later starts only compile it. The compiled model
takes `uint8` pixels directly (the conversion to float happens inside the graph) and runs
with the LATENCY hint: one stream over every core, which on 2 cores gives both the lowest
latency and the highest throughput per batch (measured in bench/). Two infer requests let
the next batch be handed over while one runs, so there is no gap between batches.

A version can also be served in int8: its IR quantized by NNCF's post-training quantization,
calibrated on the version's calibration images (``app.serving.precision``), is kept beside the f32
IR as ``model-int8.xml``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

IR_DIR = "openvino"
IR_FILE = "model.xml"
INT8_IR_FILE = "model-int8.xml"
COMPILED_CACHE_DIR = "compiled"
PRECISIONS = {"bf16": "bf16", "f32": "f32", "fp32": "f32", "int8": "int8"}


def ir_path(model_path: Path) -> Path:
    return Path(model_path).parent / IR_DIR / IR_FILE


def int8_ir_path(model_path: Path) -> Path:
    return Path(model_path).parent / IR_DIR / INT8_IR_FILE


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 (AVX512_BF16 or AMX); elsewhere OpenVINO runs f32."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# NNCF's post-training quantization, as measured best on MobileNetV2 trained on SIGNS (472
# held-out and calibration photos; bench/precision_auto.py): the mixed preset (asymmetric
# activations) with full bias correction changed 5 answers of Keras f32's, the defaults 16.
# When that is still too many, the depthwise convolutions (the layers most hurt by int8 in
# MobileNet-style networks) are kept in f32: 2 answers changed, at 1.6x f32's speed
# instead of 2.3x.
INT8_RECIPES = {
    "all": "every convolution int8",
    "depthwise_f32": "depthwise convolutions kept in f32",
    "ends_f32": "the first convolution and the classifier kept in f32",
}


def quantize_to_int8(
    model_path: Path, calibration: np.ndarray, recipe: str = "all", replace: bool = False
) -> Path:
    """Quantize the version's IR to int8 with NNCF, calibrated on ``calibration`` (raw
    pixels `(n, S, S, 3)`), and keep it beside the f32 IR (once, unless ``replace``; the
    `.xml` is written last).

    Raises:
        ValueError: no calibration images, or a recipe that does not apply to the model.
    """
    target = int8_ir_path(model_path)
    if target.exists() and not replace:
        return target
    if len(calibration) == 0:
        raise ValueError("int8 needs calibration images, and there are none")
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(convert_to_ir(model_path)))
    options: dict[str, Any] = {}
    if recipe == "depthwise_f32":
        names = [op.get_friendly_name() for op in depthwise_ops(model)]
        if not names:
            raise ValueError("the model has no depthwise convolutions")
        options["ignored_scope"] = nncf.IgnoredScope(names=names)
    elif recipe == "ends_f32":
        options["ignored_scope"] = nncf.IgnoredScope(names=end_ops(model))
    samples = [calibration[i : i + 1].astype(np.float32) for i in range(len(calibration))]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(samples),
        subset_size=len(samples),
        preset=nncf.QuantizationPreset.MIXED,
        fast_bias_correction=False,
        **options,
    )
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=target.parent) as scratch:
        xml = Path(scratch) / INT8_IR_FILE
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        os.replace(xml.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(xml, target)
    return target


def depthwise_ops(model: Any) -> list[Any]:
    """The depthwise convolutions of an OpenVINO model."""
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "GroupConvolution"]


def end_ops(model: Any) -> list[str]:
    """The names of an OpenVINO model's first convolution and last matrix product (the
    classifier): the layers int8 most often hurts, the first because it sees raw pixels,
    the last because its errors go straight to the scores. Together a few percent of a
    ResNet-50's work."""
    ops = model.get_ordered_ops()
    convs = [op for op in ops if op.get_type_name() == "Convolution"]
    matmuls = [op for op in ops if op.get_type_name() == "MatMul"]
    ends = convs[:1] + matmuls[-1:]
    if not ends:
        raise ValueError("the model has neither convolutions nor a classifier")
    return [op.get_friendly_name() for op in ends]


def classifier_input(model: Any) -> Any:
    """The features an OpenVINO classifier's last matrix product (its ``Dense``) takes:
    the output to add for the nearest-neighbour score (`app.serving.features`). In an int8
    model they are taken before they are quantized for that product."""
    matmuls = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    if not matmuls:
        raise ValueError("the model has no classifier (no matrix product)")
    source = matmuls[-1].input(0).get_source_output()
    if source.get_node().get_type_name() == "FakeQuantize":
        source = source.get_node().input(0).get_source_output()
    return source


def convert_to_ir(model_path: Path) -> Path:
    """Convert the saved Keras model to OpenVINO IR beside it (once; atomic)."""
    target = ir_path(model_path)
    if target.exists():
        return target
    import openvino as ov

    from app.nets.transfer import inference_model, load_classifier

    model = inference_model(load_classifier(model_path))
    with tempfile.TemporaryDirectory(prefix="ov-export-") as scratch:
        saved = Path(scratch) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        ov_model = ov.convert_model(str(saved))
        partial = target.parent.with_name(f".{IR_DIR}-{uuid.uuid4().hex}")
        partial.mkdir()
        try:
            # Weights stay fp32 in the file; the inference precision is chosen at compile.
            ov.save_model(ov_model, str(partial / IR_FILE), compress_to_fp16=False)
            try:
                os.rename(partial, target.parent)
            except OSError:
                if not target.exists():  # not another process that converted it first
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


class OpenVINOPredictor:
    backend = "openvino"
    parallelism = 2
    # Larger batches gain nothing here and fall out of cache: MobileNetV2 at 224x224 runs
    # 481 img/s at batch 4 and 450 at batch 16 (two requests in flight), and served at
    # concurrency 32 it answers about 6% more images with batches of at most 4.
    batch_size = 4

    def __init__(
        self,
        model_path: Path,
        image_size: int,
        precision: str = "f32",
        calibration: Callable[[], np.ndarray | None] | None = None,
        cache: bool = True,
        features: bool = False,
    ) -> None:
        """``calibration`` gives the images to quantize with when int8 is asked for and
        the version has no int8 model yet (None: it has none, and f32 serves). ``cache``:
        keep the compiled model in the version's folder (serving does; the precision
        study, which compiles every precision once, does not). ``features``: also give
        the classifier's features (`predict_features`)."""
        self.model_path = Path(model_path)
        self.cache = cache
        self.features = features
        self.image_size = image_size
        if precision not in PRECISIONS:
            raise ValueError(f"inference precision must be one of {sorted(PRECISIONS)}")
        self.precision = PRECISIONS[precision]
        self.precision_note: str | None = None  # why it serves another precision than asked
        self._calibration = calibration
        self._local = threading.local()
        self._compiled = None

    def _int8_model(self) -> Path | None:
        path = int8_ir_path(self.model_path)
        if path.exists():
            return path
        images = self._calibration() if self._calibration is not None else None
        if images is None or len(images) == 0:
            self.precision_note = "int8 needs calibration images and this version has none"
            return None
        try:
            return quantize_to_int8(self.model_path, images)
        except Exception as exc:  # NNCF missing, or a layer it cannot quantize
            self.precision_note = f"int8 quantization failed: {exc}"
            return None

    def load(self) -> None:
        import openvino as ov

        core = ov.Core()
        path = convert_to_ir(self.model_path)
        cache = path.parent / COMPILED_CACHE_DIR
        if self.cache and os.access(path.parent, os.W_OK):
            # The compiled model, per precision (OpenVINO keys the blobs by model and
            # settings): a later load of the version skips compilation.
            core.set_property({"CACHE_DIR": str(cache)})
        hint = self.precision
        if self.precision == "int8":
            # The layers NNCF left unquantized run in f32, not in bf16 where the CPU has it.
            hint = "f32"
            int8 = self._int8_model()
            if int8 is None:
                self.precision = "f32"
            else:
                path = int8
        model = core.read_model(str(path))
        if self.features:
            model.add_outputs([classifier_input(model)])
        ppp = ov.preprocess.PrePostProcessor(model)
        ppp.input().tensor().set_element_type(ov.Type.u8)
        ppp.input().preprocess().convert_element_type(ov.Type.f32)
        model = ppp.build()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
        compiled = self._compiled = core.compile_model(model, "CPU", config)
        if self.precision != "int8":
            # What the CPU plugin runs (it falls back to f32 where bf16 has no instructions).
            ran = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
            if ran != self.precision:
                self.precision_note = f"this CPU has no {self.precision}"
            self.precision = ran

    def _infer(self, batch: np.ndarray) -> Any:
        if self._compiled is None:
            raise RuntimeError("load() the predictor first")
        request = getattr(self._local, "request", None)
        if request is None:  # one infer request per calling thread
            request = self._local.request = self._compiled.create_infer_request()
        request.infer([np.ascontiguousarray(batch, dtype=np.uint8)])
        return request

    def predict(self, batch: np.ndarray) -> np.ndarray:
        request = self._infer(batch)
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    def predict_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.features:
            raise RuntimeError("this predictor was built without features")
        request = self._infer(batch)
        probs = np.array(request.get_output_tensor(0).data, dtype=np.float32)
        feats = np.array(request.get_output_tensor(1).data, dtype=np.float32)
        return probs, feats.reshape(len(feats), -1)
