"""Each version's inference precision, chosen by measuring what it costs in accuracy.

A version keeps a held-out set (``heldout.npz``): its validation images, as the pixels the
model takes (decoded and resized exactly as serving does), with their labels, and a
calibration sample of its training images. The precision study runs the version on those
images in Keras f32 (the reference), OpenVINO f32, bf16 (where the CPU has it) and int8
(NNCF post-training quantization calibrated on the calibration sample), measures each one's
accuracy, its agreement with Keras and its speed at the serving batch size, and picks the
fastest that passes the rule (`choose`). The version's metadata keeps the table and the
choice (``precision_study``); serving under ``CONVSERVE_INFERENCE_PRECISION=auto`` uses it.

The rule. A precision passes when
  1. its held-out accuracy is at least 99% of Keras f32's (MLPerf's bar for a lower
     precision), and
  2. it changes few answers: the 95% upper confidence bound (Wilson) of the share of images
     whose top class differs from Keras f32's, over the held-out and calibration images
     together, is at most 2%.
With a small held-out set one image is several percent of accuracy, and a precision that
breaks some answers and fixes as many by chance would pass (1) alone. (2) bounds the answers
it may break at all, and it needs no labels, so it counts the calibration images too: on
SIGNS that is about 470 images, where 5 differing answers already fail it, and a version
with fewer than 133 such images serves f32 even when nothing differs. OpenVINO f32 is
the fallback when nothing passes; it is Keras' arithmetic (the parity test holds it to 1e-4).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.data.heldout import HeldOut

MIN_ACCURACY_RATIO = 0.99
MAX_DISAGREEMENT = 0.02
Z_95 = 1.6449  # one-sided 95%
CANDIDATES = ("f32", "bf16", "int8")
RULE = (
    f"the fastest precision whose held-out accuracy is at least {MIN_ACCURACY_RATIO:.0%} of"
    f" Keras f32's and whose top-1 answers differ from Keras f32's on at most"
    f" {MAX_DISAGREEMENT:.0%} of images (95% upper bound, held-out and calibration images);"
    " OpenVINO f32 when none passes"
)


def wilson_upper(k: int, n: int, z: float = Z_95) -> float:
    """Upper bound of the Wilson score interval for a share of ``k`` out of ``n``."""
    if n == 0:
        return 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + margin) / denom)


def passes(row: dict[str, Any], reference_accuracy: float) -> tuple[bool, str]:
    """Whether one precision's study row passes the rule, and why not."""
    if row.get("error"):
        return False, row["error"]
    if row["accuracy"] < MIN_ACCURACY_RATIO * reference_accuracy:
        return False, (
            f"accuracy {row['accuracy']:.4f} is under {MIN_ACCURACY_RATIO:.0%} of Keras"
            f" f32's {reference_accuracy:.4f}"
        )
    if row["disagreement_upper"] > MAX_DISAGREEMENT:
        return False, (
            f"{row['disagreements']} of {row['agreement_images']} answers differ from Keras"
            f" f32 (upper bound {row['disagreement_upper']:.1%} > {MAX_DISAGREEMENT:.0%})"
        )
    return True, ""


def choose(table: dict[str, dict[str, Any]], reference_accuracy: float) -> tuple[str, str]:
    """The precision to serve and a sentence saying why, from a study's table."""
    lower = [p for p in CANDIDATES[1:] if p in table and not table[p].get("error")]
    unmeasured = [
        f"{p} not measured: {table[p]['error']}"
        for p in CANDIDATES[1:]
        if p in table and table[p].get("error")
    ]
    rejected: list[str] = []
    for precision in sorted(lower, key=lambda p: -table[p]["images_per_second"]):
        ok, why = passes(table[precision], reference_accuracy)
        if ok:
            row = table[precision]
            reason = (
                f"{precision}: the fastest that keeps the accuracy"
                f" ({row['images_per_second']:.0f} img/s, held-out accuracy"
                f" {row['accuracy']:.4f} against Keras f32's {reference_accuracy:.4f},"
                f" {row['disagreements']} of {row['agreement_images']} answers differ)"
            )
            return precision, "; ".join([reason, *rejected, *unmeasured])
        rejected.append(f"{precision} rejected: {why}")
    return "f32", "; ".join(["f32: no lower precision passed", *rejected, *unmeasured])


def _predict_all(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int
) -> tuple[np.ndarray, float]:
    """Top-1 answers over ``images`` in batches of ``batch``, and the images per second
    (after one warm-up batch)."""
    predict(images[:batch])
    answers = []
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        answers.append(np.argmax(predict(images[i : i + batch]), axis=-1))
    seconds = time.perf_counter() - started
    return np.concatenate(answers), len(images) / max(seconds, 1e-9)


def study(
    model_path: Path,
    image_size: int,
    heldout: HeldOut,
    candidates: tuple[str, ...] = CANDIDATES,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure every precision of the version at ``model_path`` on ``heldout`` and choose.

    Returns the study: ``table`` (a row per precision: accuracy, agreement with Keras f32,
    images/s at the serving batch size, or ``error``), ``reference`` (Keras f32), ``chosen``,
    ``reason`` and ``rule``. A precision that cannot be measured (NNCF missing, a layer that
    will not quantize, no bf16 on this CPU) gets its ``error`` and is skipped.
    """
    from app.serving.predictor import KerasPredictor, openvino_available

    started = time.perf_counter()
    both = np.concatenate([heldout.images, heldout.calibration])
    n_held = len(heldout.images)
    keras_predictor = KerasPredictor(model_path, image_size)
    keras_predictor.load()
    reference, keras_speed = _predict_all(keras_predictor.predict, both, 16)
    ref_accuracy = float(np.mean(reference[:n_held] == heldout.labels))
    log(f"precision study: Keras f32 accuracy {ref_accuracy:.4f} on {n_held} held-out images")
    table: dict[str, dict[str, Any]] = {}
    if not openvino_available():
        table = {p: {"error": "the openvino package is not installed"} for p in candidates}
    else:
        for precision in candidates:
            if precision == "int8":
                table[precision] = _measure_int8(
                    model_path, image_size, heldout, reference, ref_accuracy
                )
            else:
                table[precision] = _measure(model_path, image_size, precision, heldout, reference)
            row = table[precision]
            log(
                f"precision study: {precision} "
                + (
                    row["error"]
                    if "error" in row
                    else f"accuracy {row['accuracy']:.4f}, {row['disagreements']} answers differ,"
                    f" {row['images_per_second']:.0f} img/s"
                )
            )
    chosen, reason = choose(table, ref_accuracy)
    log(f"precision study chose {reason}")
    return {
        "chosen": chosen,
        "reason": reason,
        "rule": RULE,
        "reference": {
            "runtime": "keras f32",
            "accuracy": round(ref_accuracy, 6),
            "images_per_second": round(keras_speed, 1),
        },
        "table": table,
        "images": n_held,
        "calibration_images": len(heldout.calibration),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _measure(
    model_path: Path, image_size: int, precision: str, heldout: HeldOut, reference: np.ndarray
) -> dict[str, Any]:
    from app.serving.openvino_backend import OpenVINOPredictor, bf16_supported

    if precision == "bf16" and not bf16_supported():
        return {"error": "this CPU has no bf16 instructions"}
    predictor = OpenVINOPredictor(
        model_path, image_size, precision, calibration=lambda: heldout.calibration, cache=False
    )
    try:
        predictor.load()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    if predictor.precision != precision:
        return {"error": predictor.precision_note or f"OpenVINO ran {predictor.precision}"}
    both = np.concatenate([heldout.images, heldout.calibration])
    answers, speed = _predict_all(predictor.predict, both, predictor.batch_size)
    n_held = len(heldout.images)
    differ = int(np.sum(answers != reference))
    return {
        "accuracy": round(float(np.mean(answers[:n_held] == heldout.labels)), 6),
        "agreement": round(1 - differ / len(both), 6),
        "disagreements": differ,
        "agreement_images": len(both),
        "disagreement_upper": round(wilson_upper(differ, len(both)), 6),
        "images_per_second": round(speed, 1),
    }


def _measure_int8(
    model_path: Path,
    image_size: int,
    heldout: HeldOut,
    reference: np.ndarray,
    reference_accuracy: float,
) -> dict[str, Any]:
    """int8 with every convolution quantized; when that fails the rule, again with the
    layers int8 most often hurts kept in f32 (`INT8_RECIPES`): the depthwise convolutions
    of a network that has them, else the first convolution and the classifier. The better
    of the two stays as the version's int8 model, and its row says which it is."""
    from app.serving.openvino_backend import (
        INT8_RECIPES,
        convert_to_ir,
        depthwise_ops,
        quantize_to_int8,
    )

    first = _measure(model_path, image_size, "int8", heldout, reference)
    if "error" in first or passes(first, reference_accuracy)[0]:
        return {**first, "recipe": INT8_RECIPES["all"]} if "error" not in first else first
    import openvino as ov

    ir = ov.Core().read_model(str(convert_to_ir(model_path)))
    other = "depthwise_f32" if depthwise_ops(ir) else "ends_f32"
    try:
        quantize_to_int8(model_path, heldout.calibration, other, replace=True)
    except ValueError:  # a network with neither
        return {**first, "recipe": INT8_RECIPES["all"]}
    second = _measure(model_path, image_size, "int8", heldout, reference)
    if "error" not in second and (
        passes(second, reference_accuracy)[0] or second["disagreements"] < first["disagreements"]
    ):
        return {**second, "recipe": INT8_RECIPES[other], "also_tried": {
            "recipe": INT8_RECIPES["all"], **first}}  # fmt: skip
    quantize_to_int8(model_path, heldout.calibration, "all", replace=True)  # the better one
    return {**first, "recipe": INT8_RECIPES["all"], "also_tried": {
        "recipe": INT8_RECIPES[other], **second}}  # fmt: skip


def study_or_fallback(
    model_path: Path,
    image_size: int,
    heldout: HeldOut | None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """`study`, never raising: a version whose study fails serves f32, saying why."""
    if heldout is None or len(heldout.images) == 0:
        return {"chosen": "f32", "reason": "f32: the version has no held-out images", "rule": RULE}
    try:
        return study(model_path, image_size, heldout, log=log)
    except Exception as exc:
        log(f"precision study failed: {exc}")
        return {
            "chosen": "f32",
            "reason": f"f32: the precision study failed ({type(exc).__name__}: {exc})"[:500],
            "rule": RULE,
        }


def serving_precision(setting: str, metadata: dict[str, Any]) -> tuple[str, str]:
    """The precision a version is served at under ``CONVSERVE_INFERENCE_PRECISION``, and why."""
    if setting != "auto":
        return setting, f"CONVSERVE_INFERENCE_PRECISION={setting}"
    found = metadata.get("precision_study")
    if not found or found.get("chosen") not in CANDIDATES:
        return "f32", "auto: this version has no precision study (no held-out images)"
    return found["chosen"], f"auto: {found.get('reason', found['chosen'])}"
