"""Load test of the served models against their raw throughput, on this machine.

Starts the service (uvicorn, loopback, a throw-away registry with ResNet-50 and MobileNetV2
at 224x224, random weights), sends real JPEGs (the SIGNS photos plus larger photos made in
code) at concurrency 1, 8 and 32, and prints requests/s, images/s, p50 and p99 latency. In
the same run, with the service idle, it measures each model's raw throughput at batch 1 and
batch 16 (the same Keras forward pass the service uses, without HTTP).

    python bench/serve_bench.py [--requests 200] [--seconds 30] [--models resnet50,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIGNS = ROOT.parent / "shared" / "data" / "signs" / "train"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_images(count: int = 64) -> list[bytes]:
    """SIGNS JPEGs where available, plus large camera-sized JPEGs made in code."""
    images: list[bytes] = []
    if SIGNS.is_dir():
        images += [p.read_bytes() for p in sorted(SIGNS.rglob("*.jpg"))[: count // 2]]
    rng = np.random.default_rng(0)
    while len(images) < count:
        h, w = (1200, 1600) if len(images) % 2 else (720, 960)
        base = rng.uniform(0, 255, (h // 40, w // 40, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=88)
        images.append(buf.getvalue())
    return images


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def load(
    url: str, model: str, images: list[bytes], concurrency: int, requests: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker(offset: int) -> None:
            nonlocal sent, errors
            i = offset
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                data = images[i % len(images)]
                i += concurrency
                started = time.perf_counter()
                r = await client.post(
                    "/predict",
                    params={"model": model, "top_k": 1},
                    files={"file": ("img.jpg", data, "image/jpeg")},
                )
                latencies.append(time.perf_counter() - started)
                if r.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*[worker(k) for k in range(concurrency)])
        wall = time.perf_counter() - started
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "req_s": n / wall,
        "img_s": (n - errors) / wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def raw_throughput(models_dir: Path, name: str, seconds: float) -> dict[int, dict[str, float]]:
    """Images/s and per-batch latency of the bare forward pass, batch 1 and 16."""
    from app.registry import ModelRegistry
    from app.serving.predictor import KerasPredictor

    registry = ModelRegistry(models_dir)
    version = registry.active_version(name)
    assert version is not None
    size = int(registry.metadata(name, version)["image_size"])
    predictor = KerasPredictor(registry.model_path(name, version), size)
    predictor.load()
    out = {}
    for batch in (1, 16):
        x = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3)).astype(np.uint8)
        for _ in range(3):
            predictor.predict(x)
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t = time.perf_counter()
            predictor.predict(x)
            times.append(time.perf_counter() - t)
        out[batch] = {
            "img_s": batch / statistics.mean(times),
            "p50_ms": percentile(times, 50) * 1000,
        }
    return out


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError("the service exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("the service did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument("--requests", type=int, default=240, help="cap per concurrency level")
    parser.add_argument("--seconds", type=float, default=30, help="cap per concurrency level")
    parser.add_argument("--raw-seconds", type=float, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backend", default="keras")
    args = parser.parse_args()
    models = args.models.split(",")
    images = test_images()
    work = Path(tempfile.mkdtemp(prefix="convserve-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CONVSERVE_MODELS_DIR": str(work / "models"),
        "CONVSERVE_DATA_DIR": str(work / "var"),
        "CONVSERVE_SERVED_MODELS": args.models,
        "CONVSERVE_PRETRAINED": "none",
        "CONVSERVE_BOOTSTRAP_IMAGE_SIZE": str(args.image_size),
        "CONVSERVE_BACKEND": args.backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    rows = []
    try:
        wait_ready(url, proc)
        for model in models:
            for c in (1, 8, 32):
                asyncio.run(load(url, model, images, c, 16, 10))  # warm the path
                rows.append(
                    (
                        model,
                        c,
                        asyncio.run(load(url, model, images, c, args.requests, args.seconds)),
                    )
                )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    raw = {m: raw_throughput(work / "models", m, args.raw_seconds) for m in models}

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"backend: {args.backend}; images: {len(images)} JPEGs (SIGNS 64x64 and 720p-1200p)\n")
    print("| model | concurrency | requests | errors | req/s | img/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for model, c, r in rows:
        print(
            f"| {model} | {c} | {r['requests']} | {r['errors']} | {r['req_s']:.1f} | "
            f"{r['img_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    print(
        "\n| model | raw batch 1 img/s | raw batch 1 ms | raw batch 16 img/s | "
        "served c=32 / raw b16 | served c=1 p99 / (raw b1 x1.5 + 15 ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for model in models:
        served32 = next(r for m, c, r in rows if m == model and c == 32)
        served1 = next(r for m, c, r in rows if m == model and c == 1)
        b1, b16 = raw[model][1], raw[model][16]
        budget = b1["p50_ms"] * 1.5 + 15
        print(
            f"| {model} | {b1['img_s']:.1f} | {b1['p50_ms']:.1f} | {b16['img_s']:.1f} | "
            f"{served32['img_s'] / b16['img_s']:.2f} | {served1['p99_ms'] / budget:.2f} |"
        )


if __name__ == "__main__":
    main()
