""" "Unknown" measured without photos we do not have: train on five SIGNS classes, hold the
sixth out as things the model was never taught, and see what the version does with them.

For each held-out class (``--holdout``, default all six, one training each):

- the photos are split once (seeded, stratified, the same split as bench/accuracy.py): 20%
  of each class is the test set, never seen by training;
- MobileNetV2 trains with the defaults (``train()``, ImageNet weights from ../shared/weights)
  on the other 80% of the five known classes; training fits the version's temperature and
  its abstention threshold on its own validation split (never on what is reported here);
- the version then classifies the known classes' test photos (should be kept), every
  photo of the held-out class (should be unknown), and generated images far from the data
  (noise, flat colours, gradients, stripes: should be unknown).

Reported per held-out class, per score and per keep share (the threshold that keeps that
share of the version's validation images; 0.97 is the default): the share of known test
photos kept, of the held-out class rejected, of generated images rejected; the accuracy on
known photos, the ECE before and after calibration on the known test photos, and the AUROC
of each score (known against held-out, known against generated). The two scores: the
calibrated top score, and the similarity of the image's features to the nearest training
image's (the default, `app.serving.features`), computed as serving computes them.

With ``--serving BACKEND`` it then measures what the rule costs a served request: the
first held-out class's version is served twice by one server, as it is and as a copy
without its features file (which serves by the top score), and each is load-tested with
real requests (`serve_bench.load`, the SIGNS photos and camera-sized JPEGs) at
concurrency 1, 8 and 32, the two alternating level by level.

    python bench/unknown.py [--holdout 0,1,2,3,4,5] [--max-minutes 5] [--json FILE]
                            [--serving openvino|keras]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import WEIGHTS, split_signs
from serve_bench import cpu_name

KEEP_SHARES = (0.9, 0.95, 0.97, 0.99)
GENERATED = 120


def generated_images(size: int, n: int = GENERATED, seed: int = 7) -> np.ndarray:
    """Images far from photos of hands: noise, flat colours, gradients and stripes."""
    rng = np.random.default_rng(seed)
    out = []
    ramp = np.linspace(0, 255, size)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            img = rng.integers(0, 256, (size, size, 3))
        elif kind == 1:
            img = np.broadcast_to(rng.integers(0, 256, 3), (size, size, 3))
        elif kind == 2:
            colour = rng.uniform(0.2, 1, 3)
            img = np.broadcast_to(ramp[None, :, None] * colour, (size, size, 3))
        else:
            period = int(rng.integers(4, 16))
            stripes = ((np.arange(size) // period) % 2 * 255)[None, :, None]
            img = np.broadcast_to(stripes, (size, size, 3))
        out.append(np.asarray(img, dtype=np.uint8))
    return np.stack(out)


def load_folder(folder: Path, size: int) -> np.ndarray:
    from app.data.images import load_image

    return np.stack([load_image(p.read_bytes(), size) for p in sorted(folder.glob("*.jpg"))])


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The chance that a known image scores above an unknown one (ties count half)."""
    k, u = known[:, None], unknown[None, :]
    return float(((k > u).sum() + 0.5 * (k == u).sum()) / (len(known) * len(unknown)))


def one_holdout(work: Path, held: Path, pool: Path, holdout: str, max_minutes: float) -> dict:
    from app.data.heldout import read_heldout
    from app.nets.transfer import load_classifier
    from app.serving.calibration import (
        abstention_threshold,
        calibrate,
        keep_threshold,
        reliability,
    )
    from app.serving.features import FeatureBank, features_of
    from app.storage.registry import ModelRegistry
    from app.training.params import TrainParams
    from app.training.trainer import train

    known_dir = work / f"known-{holdout}"
    for class_dir in sorted(pool.iterdir()):
        if class_dir.name != holdout:
            shutil.copytree(class_dir, known_dir / class_dir.name)
    registry = ModelRegistry(work / "models")
    name = f"without-{holdout}"
    started = time.perf_counter()
    result = train(
        known_dir,
        name,
        TrainParams(max_minutes=max_minutes),
        registry,
        work / f"ws-{holdout}",
        weights=str(WEIGHTS),
    )
    seconds = time.perf_counter() - started
    meta = registry.metadata(name, result.version)
    classes, size = meta["class_names"], int(meta["image_size"])
    temperature = float(meta["calibration"]["temperature"])
    model = load_classifier(registry.model_path(name, result.version))
    bank = FeatureBank.read(registry.version_dir(name, result.version))
    assert bank is not None, "the version kept no features"

    def scores(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated probabilities and the nearest training image's similarity."""
        batches = (images[i : i + 64] for i in range(0, len(images), 64))
        probs, features = features_of(model, batches)
        return calibrate(probs, temperature), bank.nearest(features)

    known_x = [load_folder(held / c, size) for c in classes]
    known_y = np.concatenate([np.full(len(x), i) for i, x in enumerate(known_x)])
    known, known_near = scores(np.concatenate(known_x))
    unknown, unknown_near = scores(
        np.concatenate([load_folder(pool / holdout, size), load_folder(held / holdout, size)])
    )
    generated, generated_near = scores(generated_images(size))
    heldout = read_heldout(registry.version_dir(name, result.version))
    assert heldout is not None
    validation, validation_near = scores(heldout.images)
    by_score = {
        "top_score": (
            lambda keep: abstention_threshold(validation, keep),
            known.max(1),
            unknown.max(1),
            generated.max(1),
        ),
        "nearest": (
            lambda keep: keep_threshold(validation_near, keep),
            known_near,
            unknown_near,
            generated_near,
        ),
    }
    rows = []
    for score, (threshold_at, k, u, g) in by_score.items():
        for keep in KEEP_SHARES:
            threshold = threshold_at(keep)
            rows.append(
                {
                    "score": score,
                    "keep_share": keep,
                    "threshold": round(threshold, 4),
                    "known_kept": round(float((k >= threshold).mean()), 4),
                    "holdout_rejected": round(float((u < threshold).mean()), 4),
                    "generated_rejected": round(float((g < threshold).mean()), 4),
                }
            )
    raw_known = calibrate(known, 1 / temperature)  # back to the model's own scores
    return {
        "holdout": holdout,
        "model": name,
        "version": result.version,
        "seconds": round(seconds, 1),
        "temperature": temperature,
        "validation_images": len(validation),
        "bank_images": len(bank.features),
        "known_accuracy": round(float((known.argmax(1) == known_y).mean()), 4),
        "known_images": len(known_y),
        "holdout_images": len(unknown),
        "ece_before": reliability(raw_known, known_y)["ece"],
        "ece_after": reliability(known, known_y)["ece"],
        "auroc": {s: round(auroc(v[1], v[2]), 4) for s, v in by_score.items()},
        "auroc_generated": {s: round(auroc(v[1], v[3]), 4) for s, v in by_score.items()},
        "by_keep_share": rows,
        "default": meta["abstention"],
    }


def serving_cost(work: Path, name: str, version: int, backend: str) -> list[dict[str, Any]]:
    """Served latency and throughput of one version with the nearest-image rule and, from
    a copy without its features file, with the top score."""
    import asyncio

    import httpx
    from serve_bench import load, start_service, stop, test_images, wait_ready

    from app.serving.features import BANK_FILE

    plain = f"{name}-top-score"
    shutil.copytree(work / "models" / name, work / "models" / plain)
    (work / "models" / plain / str(version) / BANK_FILE).unlink()
    images = test_images()
    url, proc = start_service(work, [name, plain], backend, 224)
    rows = []
    try:
        wait_ready(url, proc)
        for model, expected in ((name, True), (plain, False)):
            files = {"file": ("hand.jpg", images[0], "image/jpeg")}
            answer = httpx.post(f"{url}/predict", params={"model": model}, files=files).json()
            has = answer["predictions"][0].get("similarity") is not None
            assert has == expected, f"{model}: similarity {'missing' if expected else 'given'}"
        for model in (name, plain):  # warm-up
            asyncio.run(load(url, model, images, 8, 64, 20))
        for concurrency in (1, 8, 32):
            for model, rule in ((name, "nearest"), (plain, "top_score")):
                r = asyncio.run(load(url, model, images, concurrency, 400, 30))
                rows.append({"rule": rule, "concurrency": concurrency, **r})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        stop(proc)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout", default="0,1,2,3,4,5")
    parser.add_argument("--max-minutes", type=float, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--serving", choices=("openvino", "keras"), help="also measure serving")
    args = parser.parse_args()
    if not WEIGHTS.is_file():
        sys.exit(f"needs the MobileNetV2 weights at {WEIGHTS}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(tempfile.mkdtemp(prefix="convserve-unknown-"))
    held, pool, _ = split_signs(work)
    results: list[dict[str, Any]] = []
    for holdout in args.holdout.split(","):
        r = one_holdout(work, held, pool, holdout, args.max_minutes)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\nmachine: {os.cpu_count()} cores, {cpu_name()}")
    print(
        "| held out | known acc | ECE before -> after | AUROC held-out (top score / nearest)"
        " | AUROC generated (top score / nearest) |"
    )
    for r in results:
        a, g = r["auroc"], r["auroc_generated"]
        print(
            f"| {r['holdout']} | {r['known_accuracy']:.3f} | {r['ece_before']:.3f} ->"
            f" {r['ece_after']:.3f} | {a['top_score']:.3f} / {a['nearest']:.3f} |"
            f" {g['top_score']:.3f} / {g['nearest']:.3f} |"
        )
    print(
        "\n| score | keep share | known kept | held-out class rejected | generated rejected |"
        " held-out rejected per class |"
    )
    for index, row in enumerate(results[0]["by_keep_share"]):
        rows = [r["by_keep_share"][index] for r in results]
        mean = {
            k: float(np.mean([x[k] for x in rows]))
            for k in ("known_kept", "holdout_rejected", "generated_rejected")
        }
        each = ", ".join(f"{x['holdout_rejected']:.2f}" for x in rows)
        print(
            f"| {row['score']} | {row['keep_share']} | {mean['known_kept']:.3f} |"
            f" {mean['holdout_rejected']:.3f} | {mean['generated_rejected']:.3f} | {each} |"
        )
    served: list[dict[str, Any]] = []
    if args.serving:
        first = results[0]
        served = serving_cost(work, first["model"], first["version"], args.serving)
        print(f"\n{args.serving}, the version trained without class {first['holdout']}:")
        print("| rule | concurrency | requests | errors | img/s | p50 ms | p99 ms |")
        for r in served:
            print(
                f"| {r['rule']} | {r['concurrency']} | {r['requests']} | {r['errors']} |"
                f" {r['img_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
            )
    if args.json:
        args.json.write_text(json.dumps({"holdouts": results, "serving": served}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
