"""What an explanation costs: Grad-CAM (``explain=gradcam``) on MobileNetV2 at 224x224
with the ImageNet weights from ../shared/weights (random weights where they are missing),
one image and eight at a time, against a plain forward pass of the same Keras model.

    python bench/explain.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import WEIGHTS
from serve_bench import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from app.nets.transfer import build_classifier
    from app.serving.gradcam import Explainer

    weights = str(WEIGHTS) if WEIGHTS.is_file() else None
    model = build_classifier("mobilenet_v2", 6, 224, weights=weights)
    explainer = Explainer.from_model(model, 224)
    rng = np.random.default_rng(0)
    print(f"machine: {os.cpu_count()} cores, {cpu_name()}; layer {explainer.layer}")
    for batch in (1, 8):
        images = rng.integers(0, 256, (batch, 224, 224, 3)).astype(np.uint8)
        explainer.maps(images, [0] * batch)  # traced and warmed once
        model.predict_on_batch(images.astype("float32"))
        cam, forward = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            explainer.maps(images, [0] * batch)
            cam.append(time.perf_counter() - started)
            started = time.perf_counter()
            model.predict_on_batch(images.astype("float32"))
            forward.append(time.perf_counter() - started)
        print(
            f"batch {batch}: Grad-CAM {np.median(cam) / batch * 1000:.0f} ms per image,"
            f" a Keras forward pass {np.median(forward) / batch * 1000:.0f} ms per image"
            f" (median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
