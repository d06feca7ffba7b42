"""What test-time augmentation buys on SIGNS photos the model never saw, and what it costs.

Trains MobileNetV2 with the defaults (``python -m app train``, the ImageNet weights from
``../shared/weights``) on the 80% of the SIGNS photos that bench/accuracy.py trains on,
serves it (OpenVINO f32, the default backend) and sends each of the 20% held-out photos to
``/predict`` once with ``tta=none``, ``flip`` and ``crops`` (one photo per request,
``--concurrency`` requests in flight). Prints, per mode, the held-out accuracy, the photos
classified per second and the median latency.

    python bench/tta.py [--concurrency 8] [--max-minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import WEIGHTS, cli_env, split_signs
from serve_bench import ROOT, SIGNS, cpu_name, start_service, stop, wait_ready

MODES = ("none", "flip", "crops")


async def classify_all(
    url: str, photos: list[tuple[Path, str]], tta: str, concurrency: int
) -> tuple[float, float, float]:
    """Held-out accuracy, photos per second and median latency (ms) for one mode."""
    queue = list(photos)
    right, latencies = 0, []

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal right
        while queue:
            path, label = queue.pop()
            started = time.perf_counter()
            r = await client.post(
                f"{url}/predict",
                params={"model": "signs", "tta": tta, "top_k": 1},
                files={"file": (path.name, path.read_bytes())},
            )
            latencies.append(time.perf_counter() - started)
            r.raise_for_status()
            right += r.json()["predictions"][0]["top"][0]["label"] == label

    async with httpx.AsyncClient(timeout=120) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return right / len(photos), len(photos) / seconds, 1000 * statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-minutes", type=float, default=10)
    args = parser.parse_args()
    if not (SIGNS.is_dir() and WEIGHTS.exists()):
        sys.exit(f"needs the SIGNS photos at {SIGNS} and the MobileNetV2 weights at {WEIGHTS}")
    work = Path(tempfile.mkdtemp(prefix="convserve-tta-", dir=ROOT.parent))
    try:
        held, pool, _ = split_signs(work)
        env = {**cli_env(work), "CONVSERVE_PRETRAINED": str(WEIGHTS)}
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "app", "train", "--data", str(pool), "--model", "signs",
             "--max-minutes", str(args.max_minutes)],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        trained = time.perf_counter() - started
        photos = [(p, p.parent.name) for p in sorted(held.rglob("*.jpg"))]
        url, proc = start_service(work, ["signs"], "auto", 224)
        results = {}
        try:
            wait_ready(url, proc)
            asyncio.run(classify_all(url, photos[:32], "none", args.concurrency))  # warm-up
            for mode in MODES:
                results[mode] = asyncio.run(classify_all(url, photos, mode, args.concurrency))
        finally:
            stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores, {cpu_name()}")
    print(
        f"MobileNetV2 trained with the defaults in {trained / 60:.1f} min; {len(photos)}"
        f" held-out SIGNS photos, one per request, concurrency {args.concurrency}\n"
    )
    print("| tta | views | held-out accuracy | photos/s | median latency |")
    print("|---|---:|---:|---:|---:|")
    for mode, views in zip(MODES, (1, 2, 10), strict=True):
        accuracy, rate, latency = results[mode]
        print(f"| {mode} | {views} | {accuracy:.3f} | {rate:.1f} | {latency:.0f} ms |")
    print(
        json.dumps(
            {m: dict(zip(("accuracy", "rate", "ms"), r, strict=True)) for m, r in results.items()}
        )
    )


if __name__ == "__main__":
    main()
