"""Scores a client can trust: temperature scaling (Guo et al., 2017, "On calibration of
modern neural networks"), its expected calibration error, and the abstention threshold a
version answers "unknown" below.

A version's classifier ends in a softmax, so its log-probabilities are its logits up to a
constant per image, which a softmax ignores: the calibrated probabilities are
``softmax(log(p) / T)``. ``T`` is fitted after training on the version's validation images
(the negative log-likelihood, a one-dimensional convex problem in ``log T``), and the
threshold is the calibrated top score that keeps ``keep_share`` of those images.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

ECE_BINS = 15
# Temperatures searched (log-spaced): below 1 sharpens, above 1 softens.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
TINY = 1e-12


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` per row (rows of a softmax output)."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs.astype(np.float64), TINY, None)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(axis=-1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, TINY, None))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (golden
    section search on ``log T``, where the loss is convex)."""
    lo, hi = np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)
    ratio = (np.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return nll(calibrate(probs, float(np.exp(log_t))), labels)

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return round(float(np.exp((lo + hi) / 2)), 4)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """The expected calibration error over ``bins`` equal-width confidence bins, and the
    bins themselves (the reliability diagram): mean confidence, accuracy and count."""
    confidence = probs.max(axis=-1)
    correct = probs.argmax(axis=-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows, error = [], 0.0
    for i in range(bins):
        inside = (confidence > edges[i]) & (confidence <= edges[i + 1])
        if i == 0:
            inside |= confidence == 0
        n = int(inside.sum())
        if n == 0:
            continue
        mean_conf, accuracy = float(confidence[inside].mean()), float(correct[inside].mean())
        error += n / len(labels) * abs(mean_conf - accuracy)
        rows.append(
            {
                "low": round(float(edges[i]), 4),
                "high": round(float(edges[i + 1]), 4),
                "confidence": round(mean_conf, 4),
                "accuracy": round(accuracy, 4),
                "count": n,
            }
        )
    return {"ece": round(error, 4), "bins": rows}


def keep_threshold(scores: np.ndarray, keep_share: float) -> float:
    """The score at or above which ``keep_share`` of these (known) images' scores are
    (-1, below any top score or cosine similarity, when there are none)."""
    ranked = np.sort(np.asarray(scores).reshape(-1))
    if len(ranked) == 0:
        return -1.0
    drop = int(np.floor((1 - keep_share) * len(ranked) + 1e-9))
    return float(ranked[min(drop, len(ranked) - 1)])


def abstention_threshold(probs: np.ndarray, keep_share: float) -> float:
    """The top score at or above which ``keep_share`` of these (known) images are."""
    return keep_threshold(probs.max(axis=-1), keep_share)


def calibration_record(probs: np.ndarray, labels: np.ndarray, keep_share: float) -> dict[str, Any]:
    """What a version records: ``calibration`` (the temperature, the ECE before and after,
    both reliability diagrams) and ``abstention`` (the score, its threshold, the share of
    the validation images it keeps)."""
    temperature = fit_temperature(probs, labels)
    calibrated = calibrate(probs, temperature)
    before, after = reliability(probs, labels), reliability(calibrated, labels)
    threshold = abstention_threshold(calibrated, keep_share)
    kept = float((calibrated.max(axis=-1) >= threshold).mean()) if len(labels) else 1.0
    return {
        "calibration": {
            "temperature": temperature,
            "ece_before": before["ece"],
            "ece_after": after["ece"],
            "bins": ECE_BINS,
            "images": len(labels),
            "reliability_before": before["bins"],
            "reliability_after": after["bins"],
        },
        "abstention": {
            "score": "calibrated top probability",
            "threshold": threshold,
            "keep_share": keep_share,
            "kept_share": round(kept, 4),
        },
    }


class Trust(NamedTuple):
    temperature: float  # 1.0 without a calibration
    threshold: float | None  # None: the version does not abstain


def version_trust(metadata: dict[str, Any], by_similarity: bool = False) -> Trust:
    """A version's temperature and its abstention threshold: on the nearest training
    image's similarity when ``by_similarity`` (its features are served), else on the
    calibrated top score (a version that abstains by similarity keeps that threshold too,
    for when its features cannot be served)."""
    temperature = float((metadata.get("calibration") or {}).get("temperature") or 1.0)
    abstention = metadata.get("abstention") or {}
    key = "threshold"
    if abstention.get("method") == "nearest" and not by_similarity:
        key = "top_score_threshold"
    threshold = abstention.get(key)
    return Trust(temperature, None if threshold is None else float(threshold))
