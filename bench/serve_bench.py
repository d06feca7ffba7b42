"""Load test of the served models against their raw throughput and a naive peer.

Starts the service (uvicorn, loopback, a throw-away registry with ResNet-50 and MobileNetV2
at 224x224, random weights) once per backend (Keras, OpenVINO), then the naive peer (a
FastAPI app whose async handler calls model.predict per request), and sends each real JPEGs
(the SIGNS photos plus larger photos made in code) at concurrency 1, 8 and 32: requests/s,
images/s, p50 and p99 latency. In the same run, with no server running, it measures each
runtime's raw throughput at batch 1 and batch 16 (the predictor the service uses, without
HTTP). Every level is bounded in requests and seconds.

    python bench/serve_bench.py [--targets keras,openvino,naive] [--models resnet50,mobilenet_v2]
                                [--requests 240] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def _v2_request(
    model: str, name: str, shape: list[int], datatype: str, data: bytes
) -> tuple[str, bytes, dict[str, str]]:
    """A KServe V2 /infer request with one input in binary form: the JSON header, then the
    input's bytes, asking for the top class."""
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))}
    return f"/v2/models/{model}/infer", head + data, headers


def v2_binary_request(model: str, image: bytes) -> tuple[str, bytes, dict[str, str]]:
    """A KServe V2 /infer request carrying one JPEG as binary BYTES, as tritonclient sends
    it: the element's 4-byte length, then its bytes."""
    element = struct.pack("<I", len(image)) + image
    return _v2_request(model, "image_bytes", [1], "BYTES", element)


def v2_tensor_request(model: str, pixels: np.ndarray) -> tuple[str, bytes, dict[str, str]]:
    """A KServe V2 /infer request carrying one image as a binary UINT8 pixel tensor
    ``[1, S, S, 3]`` (decoded and resized by the client): the service decodes nothing."""
    data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return _v2_request(model, "images", [1, *pixels.shape], "UINT8", data)


async def load(
    url: str,
    model: str,
    images: list[bytes] | list[np.ndarray],
    concurrency: int,
    requests: int,
    seconds: float,
    protocol: str = "predict",
) -> dict[str, float]:
    """``concurrency`` clients, each sending one image per request until ``requests`` are
    sent or ``seconds`` pass, to ``/predict`` (multipart) or, with ``protocol="v2"``, to
    KServe V2 ``/infer`` (binary: encoded images as BYTES, arrays as UINT8 pixel tensors).
    aiohttp, not httpx: on a 2-core machine shared with the server, httpx's own CPU (about
    1.5 ms a request here) would be taken from the server."""
    import aiohttp

    v2 = []
    if protocol == "v2":
        v2 = [
            v2_binary_request(model, image)
            if isinstance(image, bytes)
            else v2_tensor_request(model, image)
            for image in images
        ]

    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def worker(offset: int) -> None:
            nonlocal sent, errors
            i = offset
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                if v2:
                    path, body, headers = v2[i % len(v2)]
                    request = session.post(path, data=body, headers=headers)
                else:
                    form = aiohttp.FormData()
                    image = images[i % len(images)]
                    form.add_field("file", image, filename="img.jpg", content_type="image/jpeg")
                    params = {"model": model, "top_k": "1"}
                    request = session.post("/predict", params=params, data=form)
                i += concurrency
                started = time.perf_counter()
                async with request as r:
                    await r.read()
                    latencies.append(time.perf_counter() - started)
                    if r.status != 200:
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


def raw_throughput(
    models_dir: Path,
    name: str,
    backend: str,
    seconds: float,
    precision: str = "f32",
    batches: tuple[int, ...] = (1, 16),
) -> dict[int, dict[str, float]]:
    """Images/s and per-batch latency of the bare forward pass at each batch size (1 and 16
    by default): the same predictor the service uses, with no HTTP, decoding or batching."""
    from app.serving.predictor import make_predictor
    from app.storage.registry import ModelRegistry

    registry = ModelRegistry(Path(models_dir))
    version = registry.active_version(name)
    assert version is not None
    size = int(registry.metadata(name, version)["image_size"])
    predictor = make_predictor(registry.model_path(name, version), size, backend, precision)
    predictor.load()
    out = {}
    for batch in batches:
        x = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3)).astype(np.uint8)
        for _ in range(3):
            predictor.predict(x)
        times: list[float] = []
        cpu = process_cpu_seconds()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t = time.perf_counter()
            predictor.predict(x)
            times.append(time.perf_counter() - t)
        out[batch] = {
            "img_s": batch / statistics.mean(times),
            "p50_ms": percentile(times, 50) * 1000,
            "cpu_ms_img": (process_cpu_seconds() - cpu) * 1000 / (batch * len(times)),
        }
    return out


def _stat_cpu_seconds(stat: str) -> float:
    """User + system CPU time from a ``/proc/.../stat`` line (of a process or a thread)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default), all threads."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


# The server's threads by role (app.serving.manager names them): the event loop is the
# process's first thread; the runtime's own worker threads start in the loader thread.
THREAD_ROLES = {"cs-decode": "decode", "cs-infer": "inference", "cs-load": "inference"}


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds each role's threads of process ``pid`` have used: ``event loop``
    (HTTP, multipart, FastAPI, batching), ``decode`` (decoding and resizing), ``inference``
    (the runtime's calls and its worker threads) and ``other``."""
    out = dict.fromkeys(("event loop", "decode", "inference", "other"), 0.0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        role = "event loop" if task.name == str(pid) else THREAD_ROLES.get(name, "other")
        out[role] += _stat_cpu_seconds(stat)
    return out


def decode_cost(images: list[bytes], size: int) -> dict[str, float]:
    """Milliseconds of CPU to decode and resize one image, as the service does it."""
    from app.data.images import load_image

    small = [b for b in images if len(b) < 20_000]
    large = [b for b in images if len(b) >= 20_000]
    out = {}
    for label, group in (("small", small), ("large", large), ("all", images)):
        if not group:
            continue
        for b in group:  # warm up
            load_image(b, size)
        cpu = process_cpu_seconds()
        for b in group * 3:
            load_image(b, size)
        out[label] = (process_cpu_seconds() - cpu) * 1000 / (3 * len(group))
    return out


def raw_in_subprocess(
    models_dir: Path,
    name: str,
    backend: str,
    seconds: float,
    precision: str,
    batches: tuple[int, ...] = (1, 16),
) -> dict[int, dict[str, float]]:
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); from serve_bench import raw_throughput;"
        f"print(json.dumps(raw_throughput({str(models_dir)!r}, {name!r}, {backend!r}, "
        f"{seconds!r}, {precision!r}, {batches!r})))"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 900) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("the server did not become ready")


def start_service(
    work: Path,
    models: list[str],
    backend: str,
    size: int,
    run_jobs: bool = False,
    precision: str = "f32",
    pretrained: str = "none",
) -> tuple[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "CONVSERVE_MODELS_DIR": str(work / "models"),
        "CONVSERVE_DATA_DIR": str(work / "var"),
        "CONVSERVE_SERVED_MODELS": ",".join(models),
        "CONVSERVE_PRETRAINED": pretrained,
        "CONVSERVE_BOOTSTRAP_IMAGE_SIZE": str(size),
        "CONVSERVE_BACKEND": backend,
        "CONVSERVE_RUN_JOBS": "true" if run_jobs else "false",
        "CONVSERVE_INFERENCE_PRECISION": precision,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    cmd = [
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
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    return f"http://127.0.0.1:{port}", proc


def start_naive(work: Path, model: str) -> tuple[str, Any]:
    from app.storage.registry import ModelRegistry

    registry = ModelRegistry(work / "models")
    version = registry.active_version(model)
    assert version is not None
    size = registry.metadata(model, version)["image_size"]
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # TensorFlow's defaults for this CPU, as a tutorial's app would run (this process
    # imported convserve, which turns oneDNN on).
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    cmd = [
        sys.executable,
        "bench/naive_peer.py",
        str(registry.model_path(model, version)),
        str(size),
        str(port),
    ]
    return f"http://127.0.0.1:{port}", subprocess.Popen(cmd, cwd=ROOT, env=env)


def run_levels(
    url: str, model: str, images: list[bytes], args: argparse.Namespace, pid: int
) -> dict[int, dict[str, float]]:
    """Each concurrency level, with the CPU time the server (``pid``) and this load
    generator spent per image."""
    out = {}
    for c in (1, 8, 32):
        asyncio.run(load(url, model, images, c, 16, 10))  # warm the path
        server, client = process_cpu_seconds(pid), process_cpu_seconds()
        result = asyncio.run(load(url, model, images, c, args.requests, args.seconds))
        done = max(result["requests"], 1)
        result["server_cpu_ms_img"] = (process_cpu_seconds(pid) - server) * 1000 / done
        result["client_cpu_ms_img"] = (process_cpu_seconds() - client) * 1000 / done
        out[c] = result
    return out


def compare_protocols(
    url: str, model: str, images: list[bytes], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """/predict and V2 /infer at concurrency 32, alternated twice, best of each (the two
    share the machine with the load generator; alternating evens out drift)."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(2):
        for protocol in ("predict", "v2"):
            r = asyncio.run(load(url, model, images, 32, args.requests, args.seconds, protocol))
            if protocol not in best or r["img_s"] > best[protocol]["img_s"]:
                best[protocol] = r
    return best


def stop(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument(
        "--targets",
        default="keras,openvino,naive",
        help="served backends to load-test, and 'naive' for the naive peer",
    )
    parser.add_argument("--requests", type=int, default=240, help="cap per concurrency level")
    parser.add_argument("--seconds", type=float, default=30, help="cap per concurrency level")
    parser.add_argument("--raw-seconds", type=float, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="f32", help="OpenVINO inference precision")
    args = parser.parse_args()
    models = args.models.split(",")
    targets = args.targets.split(",")
    backends = [t for t in targets if t != "naive"]
    images = test_images()
    work = Path(tempfile.mkdtemp(prefix="convserve-bench-"))

    served: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    protocols: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for backend in backends or ["keras"]:  # the first start also writes the models
        url, proc = start_service(work, models, backend, args.image_size, precision=args.precision)
        try:
            wait_ready(url, proc)
            if backend in backends:
                for model in models:
                    served[(backend, model)] = run_levels(url, model, images, args, proc.pid)
                    protocols[(backend, model)] = compare_protocols(url, model, images, args)
        finally:
            stop(proc)
    if "naive" in targets:
        for model in models:
            url, proc = start_naive(work, model)
            try:
                wait_ready(url, proc)
                served[("naive", model)] = run_levels(url, model, images, args, proc.pid)
            finally:
                stop(proc)
    # Each runtime alone in a fresh process, at the same precision as the service.
    raw = {
        (b, m): raw_in_subprocess(work / "models", m, b, args.raw_seconds, args.precision)
        for b in backends
        for m in models
    }

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {cpu_name()}")
    print(
        f"images: {len(images)} JPEGs (SIGNS 64x64 photos and 720p-1200p photos made in "
        f"code), models at {args.image_size}x{args.image_size}, random weights\n"
    )
    print("| model | server | concurrency | requests | errors | req/s | img/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (target, model), levels in served.items():
        for c, r in levels.items():
            print(
                f"| {model} | {target} | {c} | {r['requests']} | {r['errors']} | "
                f"{r['req_s']:.1f} | {r['img_s']:.1f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} |"
            )
    print(
        "\n| model | runtime | raw batch 1 img/s | raw batch 1 ms | raw batch 16 img/s | "
        "served c=32 / raw b16 | served c=1 p99 / (1.5 x raw b1 + 15 ms) | "
        "served c=8 p99 / p50 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (backend, model), by_batch in raw.items():
        levels = served[(backend, model)]
        b1, b16 = by_batch[1], by_batch[16]
        budget = b1["p50_ms"] * 1.5 + 15
        print(
            f"| {model} | {backend} | {b1['img_s']:.1f} | {b1['p50_ms']:.1f} | "
            f"{b16['img_s']:.1f} | {levels[32]['img_s'] / b16['img_s']:.2f} | "
            f"{levels[1]['p99_ms'] / budget:.2f} | "
            f"{levels[8]['p99_ms'] / levels[8]['p50_ms']:.2f} |"
        )
    decode = decode_cost(images, args.image_size)
    print(
        "\nWhere the CPU goes at concurrency 32 (ms of CPU per image, all threads; raw is "
        "the bare forward pass at batch 16; decode is Pillow's decode and resize to "
        f"{args.image_size}x{args.image_size}, measured alone: "
        + ", ".join(f"{k} photos {v:.2f} ms" for k, v in decode.items())
        + "):\n"
    )
    print("| model | server | raw inference | server process | load generator |")
    print("|---|---|---:|---:|---:|")
    for (target, model), levels in served.items():
        inference = raw[(target, model)][16]["cpu_ms_img"] if (target, model) in raw else None
        print(
            f"| {model} | {target} | "
            f"{'' if inference is None else f'{inference:.2f}'} | "
            f"{levels[32]['server_cpu_ms_img']:.2f} | {levels[32]['client_cpu_ms_img']:.2f} |"
        )
    print(
        "\nKServe V2 /infer (one binary JPEG per request, top class) against /predict "
        "(multipart), concurrency 32, back to back in the same service:\n"
    )
    print("| model | server | /predict img/s | V2 binary img/s | V2 / predict | V2 errors |")
    print("|---|---|---:|---:|---:|---:|")
    for (target, model), pair in protocols.items():
        ratio = pair["v2"]["img_s"] / pair["predict"]["img_s"]
        print(
            f"| {model} | {target} | {pair['predict']['img_s']:.1f} | {pair['v2']['img_s']:.1f} "
            f"| {ratio:.2f} | {pair['v2']['errors']} |"
        )
    if "openvino" in backends:
        print("\n| model | served OpenVINO c=32 img/s vs served Keras | vs naive peer |")
        print("|---|---:|---:|")
        for model in models:
            ov = served[("openvino", model)][32]["img_s"]
            ratios = [
                f"{ov / served[(peer, model)][32]['img_s']:.2f}x" if peer in targets else "-"
                for peer in ("keras", "naive")
            ]
            print(f"| {model} | {ratios[0]} | {ratios[1]} |")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
