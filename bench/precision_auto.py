"""The precision each version picks for itself, and what it buys when served.

Trains MobileNetV2 (ImageNet weights, the defaults) and ResNet-50 (from scratch: this
machine has no ImageNet ResNet-50 weights) on the SIGNS photos at 224x224 through
`python -m app train`, which runs the precision study on each new version (app.serving.precision):
accuracy on the version's held-out images of Keras f32, OpenVINO f32, bf16 and int8, its
speed at the serving batch size, and the choice. Each version is also scored on the
bench's own held-out split (`bench/accuracy.py`'s 216 photos, never trained on) at each
precision. Then the ResNet-50 version is served twice, at the precision `auto` picks and at
f32, and the naive peer once, each loaded with the serving benchmark's photo mix at
concurrency 32: images/s, errors and the server's CPU per image outside the forward pass,
also split by the server's threads (event loop, decoding, inference). At `auto` the same
photos are also sent as KServe V2 pixel tensors (decoded by the client).

    python bench/precision_auto.py [--max-minutes 10] [--resnet-minutes 25] [--requests 600]
                                   [--models mobilenet-signs,resnet-signs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SIGNS, WEIGHTS, cli_env, split_signs
from serve_bench import (
    ROOT,
    cpu_name,
    decode_cost,
    load,
    process_cpu_seconds,
    raw_in_subprocess,
    start_naive,
    start_service,
    stop,
    test_images,
    thread_cpu_seconds,
    wait_ready,
)

sys.path.insert(0, str(ROOT))


def train(work: Path, pool: Path, model: str, extra: list[str]) -> dict:
    env = {**cli_env(work), "CONVSERVE_PRETRAINED": str(WEIGHTS), "CONVSERVE_PRECISION_STUDY": "1"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "app", "train", "--data", str(pool), "--model", model,
         "--activate", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    meta = json.loads((work / "models" / model / "1" / "metadata.json").read_text())
    meta["train_minutes"] = (time.perf_counter() - started) / 60
    return meta


def heldout_accuracy(work: Path, model: str, held: Path) -> dict[str, float]:
    """Accuracy of each precision on the bench's own held-out photos."""
    from app.data.images import load_image
    from app.serving.predictor import make_predictor
    from app.storage.registry import ModelRegistry

    registry = ModelRegistry(work / "models")
    meta = registry.metadata(model, 1)
    size, classes = int(meta["image_size"]), list(meta["class_names"])
    files = sorted(p for p in held.rglob("*") if p.is_file())
    x = np.stack([load_image(p.read_bytes(), size) for p in files])
    y = np.array([classes.index(p.parent.name) for p in files])
    out = {}
    for backend, precision in (("keras", "f32"), ("openvino", "f32"), ("openvino", "bf16"),
                               ("openvino", "int8")):  # fmt: skip
        predictor = make_predictor(registry.model_path(model, 1), size, backend, precision)
        predictor.load()
        if predictor.precision != precision:
            continue
        answers = np.concatenate(
            [np.argmax(predictor.predict(x[i : i + 16]), -1) for i in range(0, len(x), 16)]
        )
        out[f"{backend} {precision}"] = float(np.mean(answers == y))
    return out


def serve(url: str, proc, model: str, images: list, requests: int, protocol="predict") -> dict:
    wait_ready(url, proc)
    asyncio.run(load(url, model, images, 32, 64, 30, protocol))  # warm the path
    cpu, roles = process_cpu_seconds(proc.pid), thread_cpu_seconds(proc.pid)
    result = asyncio.run(load(url, model, images, 32, requests, 120, protocol))
    done = result["requests"]
    result["server_cpu_ms_img"] = (process_cpu_seconds(proc.pid) - cpu) * 1000 / done
    after = thread_cpu_seconds(proc.pid)
    result["threads_cpu_ms_img"] = {k: (after[k] - roles[k]) * 1000 / done for k in after}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-minutes", type=float, default=10, help="MobileNetV2's training budget (default)"
    )
    parser.add_argument(
        "--resnet-minutes", type=float, default=25, help="ResNet-50's (from scratch, 224x224)"
    )
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument(
        "--models",
        default="mobilenet-signs,resnet-signs",
        help="which versions to train (the serving half needs resnet-signs)",
    )
    args = parser.parse_args()
    if not (SIGNS.is_dir() and WEIGHTS.exists()):
        sys.exit(f"needs the SIGNS photos at {SIGNS} and the MobileNetV2 weights at {WEIGHTS}")
    work = Path(tempfile.mkdtemp(prefix="convserve-precision-", dir=ROOT.parent))
    report: dict = {"models": {}, "served": {}}
    try:
        held, pool, _ = split_signs(work)
        runs = {
            "mobilenet-signs": ["--image-size", "224", "--max-minutes", str(args.max_minutes)],
            "resnet-signs": ["--base", "resnet50", "--from-scratch", "--image-size", "224",
                             "--epochs", "100", "--max-minutes", str(args.resnet_minutes)],
        }  # fmt: skip
        for model, extra in runs.items():
            if model not in args.models.split(","):
                continue
            meta = train(work, pool, model, extra)
            report["models"][model] = {
                "study": meta.get("precision_study"),
                "train_minutes": meta["train_minutes"],
                "bench_heldout": heldout_accuracy(work, model, held),
            }
            print(json.dumps(report["models"][model]), flush=True)
        from app.data.images import load_image

        images = test_images(64)
        pixels = [load_image(b, 224) for b in images]
        chosen = report["models"]["resnet-signs"]["study"]["chosen"]
        for precision in ("auto", "f32"):
            url, proc = start_service(work, ["resnet-signs"], "openvino", 224, precision=precision)
            try:
                report["served"][precision] = serve(
                    url, proc, "resnet-signs", images, args.requests
                )
                if precision == "auto":
                    # The same photos sent as pixel tensors (KServe V2, decoded and resized
                    # by the client): what the service's own path costs without decoding.
                    report["served"]["auto, V2 pixel tensors"] = serve(
                        url, proc, "resnet-signs", pixels, args.requests, "v2"
                    )
            finally:
                stop(proc)
            # The forward pass alone at the batch size the service runs (4 on OpenVINO).
            raw = raw_in_subprocess(work / "models", "resnet-signs", "openvino", 5,
                                    chosen if precision == "auto" else "f32", (4,))  # fmt: skip
            for label, r in report["served"].items():
                if label.startswith(precision):
                    r["raw_b4_cpu_ms_img"] = raw[4]["cpu_ms_img"]
                    r["raw_b4_img_s"] = raw[4]["img_s"]
        url, proc = start_naive(work, "resnet-signs")
        try:
            report["served"]["naive"] = serve(url, proc, "resnet-signs", images, args.requests // 4)
        finally:
            stop(proc)
        # What no serving change can skip: decoding and resizing the same photos alone.
        report["decode_ms_img"] = decode_cost(images, 224)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores, {cpu_name()}\n")
    print("| model | precision | study: held-out accuracy | answers differing from Keras f32 |"
          " img/s (batch 4) | bench held-out (216) | chosen |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---|")
    for model, found in report["models"].items():
        study = found["study"]
        ref = study["reference"]
        bench = found["bench_heldout"]
        keras_bench = bench.get("keras f32", float("nan"))
        print(
            f"| {model} | Keras f32 | {ref['accuracy']:.4f} | - |"
            f" {ref['images_per_second']:.0f} | {keras_bench:.4f} | |"
        )
        for precision, row in study["table"].items():
            if "error" in row:
                print(f"| {model} | {precision} | not measured: {row['error']} | | | | |")
                continue
            mark = "**chosen**" if precision == study["chosen"] else ""
            on_bench = bench.get(f"openvino {precision}", float("nan"))
            label = f"{precision} ({row['recipe']})" if "recipe" in row else precision
            print(
                f"| {model} | {label} | {row['accuracy']:.4f} |"
                f" {row['disagreements']} of {row['agreement_images']} |"
                f" {row['images_per_second']:.0f} | {on_bench:.4f} | {mark} |"
            )
    print()
    print("| served ResNet-50, c=32 | requests | errors | img/s | server CPU ms/img |"
          " forward pass alone, CPU ms/img (batch 4) | outside the forward pass |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in report["served"].items():
        forward = r.get("raw_b4_cpu_ms_img")
        outside = f"{r['server_cpu_ms_img'] - forward:.2f}" if forward is not None else ""
        fwd = f"{forward:.2f}" if forward is not None else ""
        print(f"| {label} | {r['requests']} | {r['errors']} | {r['img_s']:.1f} |"
              f" {r['server_cpu_ms_img']:.2f} | {fwd} | {outside} |")  # fmt: skip
    decode = report["decode_ms_img"]
    print(
        "\ndecoding and resizing the photo mix alone (Pillow, as the service does it), CPU"
        f" ms per image: {decode['all']:.2f} (SIGNS photos {decode['small']:.2f},"
        f" large photos {decode['large']:.2f})"
    )
    print("\n| served ResNet-50, c=32: the server's CPU ms/img by thread | event loop (HTTP,"
          " multipart, FastAPI, batching) | decode + resize | inference (runtime calls and"
          " workers) | other | outside inference |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in report["served"].items():
        if label == "naive":  # another program: its threads are not convserve's
            continue
        t = r["threads_cpu_ms_img"]
        outside = t["event loop"] + t["decode"] + t["other"]
        print(f"| {label} | {t['event loop']:.2f} | {t['decode']:.2f} | {t['inference']:.2f} |"
              f" {t['other']:.2f} | {outside:.2f} |")  # fmt: skip
    served = report["served"]
    print(
        f"\nauto ({chosen}) / f32: {served['auto']['img_s'] / served['f32']['img_s']:.2f}x;"
        f" auto / naive peer: {served['auto']['img_s'] / served['naive']['img_s']:.2f}x"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
