"""What capture costs a prediction: ``/predict`` latency and throughput with capture off,
on for a tenth of the images (``sample_rate`` 0.1) and on for every image (1: the most it
can write), at concurrency 1 and 8.

Serves MobileNetV2 (random weights: the cost of capture does not depend on them) on 224 px,
sends real SIGNS photos (each with its own bytes, so every kept image is a new file), and
prints, per setting and concurrency, images per second, p50 and p99 in ms, and how many
images were kept or dropped (``convserve_captures_total``).

    python bench/capture.py [--seconds 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import SIGNS, cpu_name, load, start_service, stop, wait_ready

MODEL = "mobilenet_v2"


def photos(n: int = 64) -> list[bytes]:
    files = sorted(SIGNS.glob("*/*.jpg"))[:n]
    return [f.read_bytes() for f in files]


def captured(url: str) -> dict[str, float]:
    found = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("convserve_captures_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            found[outcome] = float(line.rsplit(" ", 1)[1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    images = photos()
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url, proc = start_service(Path(tmp), [MODEL], "auto", 224)
        try:
            wait_ready(url, proc)
            for setting, rate in (("off", None), ("10%", 0.1), ("100%", 1.0)):
                if rate is not None:
                    rule = {
                        "below_score": None,
                        "sample_rate": rate,
                        "max_per_hour": 1_000_000,
                        "max_images": 1_000_000,
                    }
                    httpx.put(f"{url}/models/{MODEL}/capture", json=rule).raise_for_status()
                results[setting] = {}
                for c in (1, 8):
                    asyncio.run(load(url, MODEL, images, c, 32, 5))  # warm
                    r = asyncio.run(load(url, MODEL, images, c, 10**6, args.seconds))
                    results[setting][str(c)] = {k: round(v, 2) for k, v in r.items()}
                    print(
                        json.dumps(
                            {"capture": setting, "concurrency": c, **results[setting][str(c)]}
                        ),
                        flush=True,
                    )
            kept = captured(url)
        finally:
            stop(proc)
    summary = {"machine": cpu_name(), "results": results, "captures": kept}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
