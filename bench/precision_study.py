"""What OpenVINO's reduced precisions cost in answers and gain in speed, on this machine.

Trains MobileNetV2 on the SIGNS photos (the recipe of tests/serving/test_backend_parity.py),
runs all of them through Keras and through OpenVINO at f32, bf16 and, where NNCF is
installed (`pip install nncf`), int8 after post-training quantization calibrated on 300 of
the photos; prints top-1 agreement with Keras, the largest probability difference and the
raw throughput at batch 16. Then the raw batch-16 throughput of ResNet-50 (224x224) at
each precision. The service offers f32 (default) and bf16; int8 is measured here only.

    python bench/precision_study.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("CONVSERVE_SHARED_DIR", ROOT.parent / "shared"))
SIGNS_DIR = SHARED / "data" / "signs" / "train"
MOBILENET_WEIGHTS = (
    SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)


def throughput(infer: Callable[[np.ndarray], Any], x: np.ndarray, seconds: float) -> float:
    for _ in range(3):
        infer(x)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        started = time.perf_counter()
        infer(x)
        times.append(time.perf_counter() - started)
    return len(x) / statistics.mean(times)


def variants(ir: Path, calibration: np.ndarray) -> dict[str, Any]:
    """OpenVINO models of one IR: f32, bf16 and, with NNCF, int8."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(ir))
    out = {
        precision: core.compile_model(
            model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        )
        for precision in ("f32", "bf16")
    }
    try:
        import nncf
    except ImportError:
        print("nncf is not installed: int8 skipped (pip install nncf)")
        return out
    samples = [calibration[i : i + 1].astype(np.float32) for i in range(len(calibration))]
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    out["int8"] = core.compile_model(
        quantized, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5, help="per throughput figure")
    args = parser.parse_args()
    if not (SIGNS_DIR.is_dir() and MOBILENET_WEIGHTS.exists()):
        sys.exit("needs ../shared/data/signs and the ImageNet MobileNetV2 weights")

    from app.data.images import load_image
    from app.serving.bootstrap import bootstrap
    from app.serving.openvino_backend import convert_to_ir
    from app.serving.predictor import KerasPredictor
    from app.storage.registry import ModelRegistry
    from app.training.params import TrainParams
    from app.training.trainer import Hooks, train

    work = Path(tempfile.mkdtemp(prefix="convserve-precision-"))
    registry = ModelRegistry(work / "models")
    size = 128
    params = TrainParams(image_size=size, epochs=4, fine_tune_epochs=2, seed=7)
    result = train(
        SIGNS_DIR,
        "signs",
        params,
        registry,
        work / "ws",
        weights=str(MOBILENET_WEIGHTS),
        hooks=Hooks(log=lambda _: None),
    )
    path = registry.model_path("signs", result.version)
    files = sorted(SIGNS_DIR.rglob("*.jpg"))
    x = np.stack([load_image(f.read_bytes(), size) for f in files]).astype(np.float32)
    rng = np.random.default_rng(0)
    calibration = x[rng.choice(len(x), 300, replace=False)]

    keras_p = KerasPredictor(path, size)
    keras_p.load()
    reference = np.concatenate([keras_p.predict(x[i : i + 64]) for i in range(0, len(x), 64)])
    print(f"\nMobileNetV2 trained on SIGNS ({size}x{size}), all {len(files)} photos:\n")
    print(
        "| OpenVINO precision | top-1 agreement with Keras | largest probability difference "
        "| raw batch 16 img/s |"
    )
    print("|---|---:|---:|---:|")
    for precision, compiled in variants(convert_to_ir(path), calibration).items():
        got = np.concatenate([compiled(x[i : i + 64])[0] for i in range(0, len(x), 64)])
        agreement = float((got.argmax(1) == reference.argmax(1)).mean())
        worst = float(np.abs(got - reference).max())
        speed = throughput(compiled, x[:16], args.seconds)
        print(f"| {precision} | {agreement:.4f} | {worst:.4f} | {speed:.0f} |")

    bootstrap(registry, "resnet50", "none", 224)
    resnet_ir = convert_to_ir(registry.model_path("resnet50", 1))
    photos = np.stack([load_image(f.read_bytes(), 224) for f in files[:300]])
    print("\nResNet-50 (224x224, random weights, int8 calibrated on 300 SIGNS photos):\n")
    print("| OpenVINO precision | raw batch 16 img/s |")
    print("|---|---:|")
    for precision, compiled in variants(resnet_ir, photos).items():
        speed = throughput(compiled, photos[:16].astype(np.float32), args.seconds)
        print(f"| {precision} | {speed:.0f} |")


if __name__ == "__main__":
    main()
