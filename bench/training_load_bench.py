"""Prediction latency while a fine-tuning job trains, against an idle service.

Starts the service (loopback, MobileNetV2 at 224x224, random weights), measures /predict
latency at a steady concurrency with nothing else running, then uploads a dataset (the SIGNS
photos where available, else generated images), and measures again while the job trains.

    python bench/training_load_bench.py [--concurrency 4] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import SIGNS, cpu_name, load, start_service, stop, test_images, wait_ready

from app.config import Settings


def dataset_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(SIGNS.rglob("*.jpg")):
            zf.write(path, str(path.relative_to(SIGNS)))
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    if not SIGNS.is_dir():
        sys.exit(f"needs the SIGNS photos at {SIGNS}")
    images = test_images()
    work = Path(tempfile.mkdtemp(prefix="convserve-trainload-"))
    url, proc = start_service(work, ["mobilenet_v2"], args.backend, 224, run_jobs=True)
    try:
        wait_ready(url, proc)
        idle = asyncio.run(load(url, "mobilenet_v2", images, args.concurrency, 10**9, args.seconds))
        r = httpx.post(
            f"{url}/finetune",
            files={"dataset": ("signs.zip", dataset_zip())},
            data={
                "model": "mobilenet_v2",
                "image_size": "160",
                "epochs": "30",
                "fine_tune_epochs": "0",
                "promote": "false",
            },
            timeout=120,
        )
        r.raise_for_status()
        job = r.headers["location"]

        def fraction() -> float:
            progress = httpx.get(f"{url}{job}").json().get("progress") or {}
            return float(progress.get("fraction") or 0.0)

        while fraction() == 0.0:  # until its first batches are trained
            time.sleep(0.5)
        before = fraction()
        busy = asyncio.run(load(url, "mobilenet_v2", images, args.concurrency, 10**9, args.seconds))
        state = httpx.get(f"{url}{job}").json()
        trained = (float(state["progress"]["fraction"]) - before) * state["progress"][
            "total_epochs"
        ]
        httpx.delete(f"{url}{job}")
    finally:
        stop(proc)
    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu_name()}; MobileNetV2 224x224, "
        f"concurrency {args.concurrency}, {args.seconds:.0f} s per phase"
    )
    settings = Settings()
    print(
        f"job during the second phase: {state['status']}, epoch "
        f"{state['progress']['epoch']}/{state['progress']['total_epochs']}; it trained "
        f"{trained:.2f} epochs in those {args.seconds:.0f} s (CONVSERVE_JOB_THREADS="
        f"{settings.job_threads}, CONVSERVE_JOB_NICE={settings.job_nice})\n"
    )
    print("| service | requests | errors | img/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, res in (("idle", idle), ("while a job trains", busy)):
        print(
            f"| {name} | {res['requests']} | {res['errors']} | {res['img_s']:.1f} | "
            f"{res['p50_ms']:.1f} | {res['p99_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
