"""Soak run: steady predictions on both models while jobs train, get cancelled and swap
versions; then 50 activations back and forth. Prints the README's tables.

The service runs as in production (``python -m app serve``, OpenVINO, ResNet-50 and
MobileNetV2 at 224x224 with random weights). For ``--minutes`` (default 32) 16 clients send
one JPEG per request, alternating the two models. Meanwhile fine-tuning jobs on the SIGNS
photos run one after another (three by default; the second is cancelled after its first
epoch, the others are promoted), and every ``--swap-minutes`` the previous version of
MobileNetV2 is activated and,
a minute later, the newest again (a rollback and a roll forward). Every 10 s the service's
RSS and open file descriptors are sampled. After the soak, with the clients still sending,
versions 1 and 2 of MobileNetV2 are activated in turn ``--reloads`` times (default 50) and
the RSS after each swap recorded. Finally the data folder is measured: finished jobs must
leave nothing behind.

    python bench/soak.py [--minutes 32] [--concurrency 16] [--reloads 50]

Results also go to build/bench/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import (
    ROOT,
    SIGNS,
    cpu_name,
    percentile,
    start_service,
    stop,
    test_images,
    wait_ready,
)

MODELS = ("mobilenet_v2", "resnet50")
WINDOW_SECONDS = 600


def dataset_zip(per_class: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for folder in sorted(p for p in SIGNS.iterdir() if p.is_dir()):
            for path in sorted(folder.glob("*.jpg"))[:per_class]:
                zf.write(path, f"{folder.name}/{path.name}")
    return buf.getvalue()


class Load:
    """``concurrency`` aiohttp clients; every request's end time, latency and outcome."""

    def __init__(self, url: str, images: list[bytes], concurrency: int) -> None:
        self.url, self.images, self.concurrency = url, images, concurrency
        self.samples: list[tuple[float, float, int]] = []  # (time, seconds, status or -1)
        self.failures: list[str] = []
        self.running = True

    async def run(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(self.url, connector=connector, timeout=timeout) as s:
            await asyncio.gather(*[self._worker(s, k) for k in range(self.concurrency)])

    async def _worker(self, session: Any, k: int) -> None:
        import aiohttp

        i = k
        while self.running:
            form = aiohttp.FormData()
            form.add_field(
                "file",
                self.images[i % len(self.images)],
                filename="i.jpg",
                content_type="image/jpeg",
            )
            params = {"model": MODELS[i % 2], "top_k": "1"}
            i += self.concurrency
            started = time.perf_counter()
            status = -1
            try:
                async with session.post("/predict", params=params, data=form) as r:
                    body = await r.read()
                    status = r.status
                    if status != 200:
                        self.failures.append(f"{status} {body[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))
            self.samples.append((time.time(), time.perf_counter() - started, status))


class Sampler:
    """The service process's RSS and open file descriptors every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 10.0) -> None:
        self.proc = psutil.Process(pid)
        self.every = every
        self.points: list[dict[str, float]] = []

    def sample(self) -> dict[str, float]:
        point = {
            "t": time.time(),
            "rss_mb": self.proc.memory_info().rss / 2**20,
            "fds": float(self.proc.num_fds()),
            "threads": float(self.proc.num_threads()),
        }
        self.points.append(point)
        return point

    async def run(self, running: Any) -> None:
        while running():
            self.sample()
            await asyncio.sleep(self.every)


async def wait_job(client: httpx.AsyncClient, job_id: str, until: Any) -> dict[str, Any]:
    while True:
        job = (await client.get(f"/finetune/{job_id}")).json()
        if until(job) or job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(2)


async def jobs_and_swaps(
    url: str, args: argparse.Namespace, deadline: float, log: list[dict[str, Any]]
) -> None:
    """Jobs one after another (the second cancelled) and swaps, until ``deadline``."""
    data = dataset_zip(args.per_class)
    fields = {
        "model": "mobilenet_v2",
        "image_size": str(args.image_size),
        "epochs": str(args.epochs),
        "fine_tune_epochs": str(args.fine_tune_epochs),
        "batch_size": "32",
    }
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def swapper() -> None:
            """Roll back to the previous version, and a minute later forward again."""
            while True:
                await asyncio.sleep(min(args.swap_minutes * 60, max(0, deadline - time.time())))
                if time.time() > deadline - 90:
                    return
                versions = (await client.get("/models/mobilenet_v2")).json()["versions"]
                if len(versions) < 2:
                    continue
                for version in (versions[-2], versions[-1]):
                    r = await client.post(f"/models/mobilenet_v2/versions/{version}/activate")
                    log.append(
                        {"t": time.time(), "event": f"activate v{version}", "status": r.status_code}
                    )
                    await asyncio.sleep(60)

        swaps = asyncio.create_task(swapper())
        n = 0
        while n < args.jobs and time.time() < deadline - 120:
            n += 1
            r = await client.post("/finetune", files={"dataset": ("signs.zip", data)}, data=fields)
            r.raise_for_status()
            job_id = r.json()["job_id"]
            log.append({"t": time.time(), "event": f"job {n} queued", "job": job_id})
            if n == 2:
                await wait_job(client, job_id, lambda j: len(j.get("history") or []) >= 1)
                await client.delete(f"/finetune/{job_id}")
                log.append({"t": time.time(), "event": f"job {n} cancel asked"})
            job = await wait_job(client, job_id, lambda j: False)
            log.append(
                {
                    "t": time.time(),
                    "event": f"job {n} {job['status']}",
                    "version": (job.get("result") or {}).get("version"),
                    "accuracy": ((job.get("result") or {}).get("metrics") or {}).get("accuracy"),
                }
            )
        await swaps


async def reloads(
    url: str, count: int, sampler: Sampler, log: list[dict[str, Any]]
) -> list[dict[str, float]]:
    """Activate versions 1 and 2 of MobileNetV2 in turn, RSS after each swap."""
    points = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for k in range(count):
            version = 1 if k % 2 == 0 else 2
            r = await client.post(f"/models/mobilenet_v2/versions/{version}/activate")
            if r.status_code != 200:
                log.append({"t": time.time(), "event": f"reload {k + 1}", "status": r.status_code})
            points.append({"swap": k + 1, **sampler.sample()})
    return points


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def soak(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    images = test_images()
    load = Load(url, images, args.concurrency)
    sampler = Sampler(pid)
    events: list[dict[str, Any]] = []
    start = time.time()
    deadline = start + args.minutes * 60
    load_task = asyncio.create_task(load.run())
    sample_task = asyncio.create_task(sampler.run(lambda: load.running))
    await jobs_and_swaps(url, args, deadline, events)
    while time.time() < deadline:
        await asyncio.sleep(1)
    soak_end = time.time()
    reload_points = await reloads(url, args.reloads, sampler, events)
    load.running = False
    await load_task
    await sample_task
    return {
        "start": start,
        "soak_end": soak_end,
        "samples": load.samples,
        "failures": load.failures,
        "memory": sampler.points,
        "reloads": reload_points,
        "events": events,
    }


def windows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    start, end = result["start"], result["soak_end"]
    edges = list(range(0, int(end - start) + 1, WINDOW_SECONDS))
    if edges[-1] < end - start - 60:
        edges.append(int(end - start))
    for a, b in itertools.pairwise(edges):
        samples = [s for s in result["samples"] if start + a <= s[0] < start + b]
        lat = [s[1] for s in samples]
        mem = [m for m in result["memory"] if start + a <= m["t"] < start + b]
        rows.append(
            {
                "minutes": f"{a // 60}-{b // 60}",
                "requests": len(samples),
                "failed": sum(1 for s in samples if s[2] != 200),
                "p50_ms": percentile(lat, 50) * 1000 if lat else 0.0,
                "p99_ms": percentile(lat, 99) * 1000 if lat else 0.0,
                "rss_mb": mem[-1]["rss_mb"] if mem else 0.0,
                "fds": mem[-1]["fds"] if mem else 0.0,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reloads", type=int, default=50)
    parser.add_argument("--swap-minutes", type=float, default=4)
    parser.add_argument("--jobs", type=int, default=3, help="jobs, one after another")
    parser.add_argument("--per-class", type=int, default=180, help="SIGNS photos per class")
    # Sized so that the three jobs take most of the 32 minutes on a 2-core machine.
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--fine-tune-epochs", type=int, default=6)
    args = parser.parse_args()
    if not SIGNS.is_dir():
        sys.exit(f"needs the SIGNS photos at {SIGNS}")
    work = Path(tempfile.mkdtemp(prefix="convserve-soak-"))
    url, proc = start_service(work, list(MODELS), "auto", 224, run_jobs=True)
    try:
        wait_ready(url, proc)
        result = asyncio.run(soak(url, proc.pid, args))
        jobs_left = (
            sorted(p.name for p in (work / "var" / "jobs").glob("*"))
            if (work / "var" / "jobs").is_dir()
            else []
        )
        data_bytes = du_bytes(work / "var")
        models_bytes = du_bytes(work / "models")
    finally:
        stop(proc)

    rows = windows(result)
    memory = result["memory"]
    warm = [m for m in memory if m["t"] >= result["start"] + WINDOW_SECONDS]
    reload_pts = result["reloads"]
    total = len(result["samples"])
    failed = sum(1 for s in result["samples"] if s[2] != 200)
    summary = {
        "machine": f"{os.cpu_count()} cores, {cpu_name()}",
        "minutes": round((result["soak_end"] - result["start"]) / 60, 1),
        "requests": total,
        "failed": failed,
        "rss_after_warmup_mb": round(warm[0]["rss_mb"], 1) if warm else None,
        "rss_end_of_soak_mb": round(
            [m for m in memory if m["t"] <= result["soak_end"]][-1]["rss_mb"], 1
        ),
        "fds_after_warmup": warm[0]["fds"] if warm else None,
        "fds_end_of_soak": [m for m in memory if m["t"] <= result["soak_end"]][-1]["fds"],
        "reload_rss_after_2_mb": round(reload_pts[1]["rss_mb"], 1) if len(reload_pts) > 1 else None,
        "reload_rss_after_last_mb": round(reload_pts[-1]["rss_mb"], 1) if reload_pts else None,
        "reloads": len(reload_pts),
        "data_dir_bytes_after": data_bytes,
        "job_folders_left": jobs_left,
        "models_dir_bytes": models_bytes,
        "failures_first": result["failures"][:10],
        "events": result["events"],
    }
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(
        json.dumps(
            {"summary": summary, "windows": rows, "memory": memory, "reloads": reload_pts}, indent=1
        )
    )
    print(
        f"\nmachine: {summary['machine']}; {summary['minutes']} min, concurrency {args.concurrency}"
    )
    print(f"requests {total}, failed {failed}\n")
    print("| minutes | requests | failed | p50 ms | p99 ms | RSS MB (end) | open fds (end) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['minutes']} | {r['requests']} | {r['failed']} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['rss_mb']:.0f} | {r['fds']:.0f} |"
        )
    print("\nevents:")
    for e in result["events"]:
        rest = {k: v for k, v in e.items() if k not in ("t", "event")}
        print(f"  {(e['t'] - result['start']) / 60:5.1f} min  {e['event']}  {rest or ''}")
    print(json.dumps({k: v for k, v in summary.items() if k != "events"}, indent=1))


if __name__ == "__main__":
    main()
