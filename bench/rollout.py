"""What a rollout costs: throughput and p99 of ``/predict`` at concurrency 32 with no
rollout, a canary at 10% and a shadow of every request (100%), on the same machine.

Serves MobileNetV2 (random weights; 224 px) with two versions (the second a copy of the
first: they agree on every image, so nothing stops the rollout), sends real SIGNS photos,
and prints, per setting, images per second, p50 and p99 in ms, and the rollout's figures.
A shadow runs every request twice (once for the answer, once off the request path), so on
a machine the server already keeps busy its throughput is expected to halve.

    python bench/rollout.py [--seconds 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture import photos
from serve_bench import cpu_name, load, start_service, stop, wait_ready

MODEL = "mobilenet_v2"
SETTINGS = {
    "none": None,
    "canary 10%": {"mode": "canary", "share": 0.1},
    "shadow 100%": {"mode": "shadow", "share": 1.0},
}


def second_version(work: Path) -> None:
    """Version 2: a copy of the bootstrap's version 1."""
    from app.storage.registry import ModelRegistry

    registry = ModelRegistry(work / "models")
    meta = registry.metadata(MODEL, 1)
    source = registry.version_dir(MODEL, 1)

    def save(folder: Path) -> None:
        for f in source.iterdir():
            if f.is_file() and f.name != "metadata.json":
                shutil.copy(f, folder / f.name)

    registry.write_version(
        MODEL, save, {k: v for k, v in meta.items() if k not in ("name", "created_at")}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    images = photos()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url, proc = start_service(work, [MODEL], "auto", 224)
        wait_ready(url, proc)  # writes version 1
        stop(proc)
        second_version(work)
        url, proc = start_service(work, [MODEL], "auto", 224)
        try:
            wait_ready(url, proc)
            for name, body in SETTINGS.items():
                if body is not None:
                    r = httpx.put(
                        f"{url}/models/{MODEL}/rollout",
                        json={"version": 2, "max_error_rate": None, **body},
                        timeout=120,
                    )
                    r.raise_for_status()
                asyncio.run(load(url, MODEL, images, 32, 64, 5))  # warm
                r = asyncio.run(load(url, MODEL, images, 32, 10**6, args.seconds))
                results[name] = {k: round(v, 2) for k, v in r.items()}
                if body is not None:
                    time.sleep(2)
                    shown = httpx.get(f"{url}/models/{MODEL}/rollout", timeout=60).json()
                    results[name]["figures"] = shown["figures"]
                    httpx.delete(f"{url}/models/{MODEL}/rollout", timeout=60).raise_for_status()
                print(json.dumps({"setting": name, **results[name]}), flush=True)
        finally:
            stop(proc)
    summary = {"machine": cpu_name(), "concurrency": 32, "results": results}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
