"""Accuracy of the training defaults on photos that training never sees.

Sets aside a fixed, seeded, stratified 20% of the SIGNS photos (the held-out set), then:

- ``mobilenet_v2``: uploads the other 80% to ``/finetune`` of a running service with no
  field but the model name (the defaults a new user gets: MobileNetV2 with the ImageNet
  weights from ``../shared/weights``), and waits for the job;
- ``mobilenet_v2_30`` and ``mobilenet_v2_10``: the same with 30 (or 10) photos per class
  of that 80%, once per seeded subset (``--subsets``, three by default), reported with
  their mean and spread;
- ``resnet50_scratch``: ``python -m app train`` of our ResNet-50 from scratch with the
  course's recipe (Adam at 1e-3, batch 32, 10 epochs, 64x64, pixels / 255, no
  augmentation) on the 80%;
- ``lenet5_scratch``: ``python -m app train --base lenet5 --image-size 64`` (LeNet-5
  from scratch, everything else the defaults) on the 80%;
- ``resnet50_scratch_defaults``: the course's settings (Adam at 1e-3, batch 32, 64x64,
  pixels / 255) with this project's defaults from scratch (augmentation, early stopping,
  the learning rate decayed over the 10-minute budget);
- ``resnet50_scratch_long`` (only when named): the same, up to 60 epochs in 25 minutes;

and evaluates each new version on the held-out photos with ``python -m app evaluate``.
Prints, per run, the held-out accuracy, the wall time (upload to finished job, or the
``train`` command) and the settings training chose (epochs run and why each phase
stopped, the layer fine-tuning started from, class weights, augmentation).

    python bench/accuracy.py [--runs mobilenet_v2,mobilenet_v2_30,mobilenet_v2_10,
                               resnet50_scratch,resnet50_scratch_defaults,lenet5_scratch,...]
                             [--subsets 1,2,3] [--split-seed N] [--field name=value ...]
                             [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import ROOT, SIGNS, cpu_name, start_service, stop, wait_ready

WEIGHTS = (
    ROOT.parent
    / "shared"
    / "weights"
    / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)
HELD_OUT = 0.2
SPLIT_SEED = 2026
# The course's settings: ResNet-50 from scratch (its preprocessing is pixels / 255) on
# 64x64 photos, Adam at 1e-3, batch 32.
COURSE_SETTINGS = [
    "--base",
    "resnet50",
    "--from-scratch",
    "--image-size",
    "64",
    "--batch-size",
    "32",
    "--learning-rate",
    "0.001",
]
# The course's recipe: 10 epochs, no augmentation.
COURSE_RECIPE = [*COURSE_SETTINGS, "--epochs", "10", "--no-augment"]
# The course's settings with this project's defaults for a network trained from scratch:
# augmentation, early stopping, the learning rate falling to nothing over the 10-minute
# budget.
DEFAULTS_RECIPE = COURSE_SETTINGS
# The same, given more time (not run unless asked for: about 25 minutes).
LONG_RECIPE = [*COURSE_SETTINGS, "--epochs", "60", "--max-minutes", "25"]
# LeNet-5 from scratch (it has no ImageNet weights) at the photos' own 64x64.
LENET_RECIPE = ["--base", "lenet5", "--image-size", "64"]


def split_signs(work: Path, signs: Path = SIGNS, seed: int = SPLIT_SEED) -> tuple[Path, Path, Path]:
    """The held-out folder, the training pool and its 30-per-class subset (seeded,
    stratified: the same photos on every run with the same seed)."""
    held, pool, small = work / "held_out", work / "pool", work / "pool_30"
    rng = random.Random(seed)
    for class_dir in sorted(p for p in signs.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))
        rng.shuffle(files)
        cut = round(len(files) * HELD_OUT)
        for folder, chosen in (
            (held, files[:cut]),
            (pool, files[cut:]),
            (small, files[cut : cut + 30]),
        ):
            (folder / class_dir.name).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, folder / class_dir.name / f.name)
    return held, pool, small


def subset(pool: Path, work: Path, per_class: int, seed: int) -> Path:
    """``per_class`` photos of each class of ``pool``, drawn with ``seed`` (the same photos
    on every run with the same seed)."""
    folder = work / f"pool_{per_class}_subset_{seed}"
    rng = random.Random(seed)
    for class_dir in sorted(p for p in pool.iterdir() if p.is_dir()):
        (folder / class_dir.name).mkdir(parents=True)
        for f in rng.sample(sorted(class_dir.glob("*.jpg")), per_class):
            shutil.copy(f, folder / class_dir.name / f.name)
    return folder


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*.jpg")):
            zf.write(path, str(path.relative_to(folder)))
    return buf.getvalue()


def cli_env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CONVSERVE_MODELS_DIR": str(work / "models"),
        "CONVSERVE_DATA_DIR": str(work / "var"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def evaluate(work: Path, model: str, version: int, held: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "app", "evaluate", "--model", f"{model}:{version}", "--data", held],
        cwd=ROOT,
        env=cli_env(work),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["accuracy"])


def finetune(url: str, folder: Path, model: str, fields: dict[str, str]) -> tuple[int, float]:
    started = time.perf_counter()
    r = httpx.post(
        f"{url}/finetune",
        files={"dataset": ("photos.zip", zip_folder(folder))},
        data={"model": model, **fields},
        timeout=300,
    )
    r.raise_for_status()
    job_url = url + r.headers["location"]
    while True:
        job = httpx.get(job_url, timeout=30).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['status']}: {job.get('error')}")
    return int(job["result"]["version"]), time.perf_counter() - started


def chosen(work: Path, model: str, version: int) -> dict[str, Any]:
    meta = json.loads((work / "models" / model / str(version) / "metadata.json").read_text())
    history = meta.get("history", [])
    return {
        "training": meta.get("training"),  # what the trainer chose and why it stopped
        "epochs_run": len(history),
        "validation_accuracy": meta.get("metrics", {}).get("accuracy"),
        "params": meta.get("params"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        default=(
            "mobilenet_v2,mobilenet_v2_30,mobilenet_v2_10,resnet50_scratch,"
            "resnet50_scratch_defaults,lenet5_scratch"
        ),
    )
    parser.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra /finetune form field (and train option) for every run",
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=SPLIT_SEED,
        help=f"seed of the held-out split (default {SPLIT_SEED}, the reported one); another"
        " seed gives a development split, to compare settings without looking at the"
        " reported held-out photos",
    )
    parser.add_argument(
        "--subsets",
        default="1,2,3",
        help="seeds of the subsets the small runs (mobilenet_v2_30, mobilenet_v2_10) draw"
        " from the training pool, one run each",
    )
    parser.add_argument("--label", default="", help="a name for this run's settings")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not (SIGNS.is_dir() and WEIGHTS.exists()):
        sys.exit(f"needs the SIGNS photos at {SIGNS} and the MobileNetV2 weights at {WEIGHTS}")
    fields = dict(f.split("=", 1) for f in args.field)
    runs = args.runs.split(",")
    work = Path(tempfile.mkdtemp(prefix="convserve-accuracy-", dir=ROOT.parent))
    # Keras finds the "imagenet" weights in its cache, as after a first download.
    (work / "keras" / "models").mkdir(parents=True)
    shutil.copy(WEIGHTS, work / "keras" / "models" / WEIGHTS.name)
    os.environ["KERAS_HOME"] = str(work / "keras")
    held, pool, _ = split_signs(work, seed=args.split_seed)
    held_count = sum(1 for _ in held.rglob("*.jpg"))
    results: list[dict[str, Any]] = []
    try:
        service_runs = [r for r in runs if r.startswith("mobilenet_v2")]
        if service_runs:
            url, proc = start_service(
                work, ["none"], "keras", 224, run_jobs=True, pretrained="imagenet"
            )
            try:
                wait_ready(url, proc)
                for run in service_runs:
                    per_class = run.removeprefix("mobilenet_v2").lstrip("_")
                    if not per_class:
                        version, seconds = finetune(url, pool, run, fields)
                        results.append({"run": run, "version": version, "seconds": seconds})
                        continue
                    for seed in (int(s) for s in args.subsets.split(",")):
                        folder = subset(pool, work, int(per_class), seed)
                        version, seconds = finetune(url, folder, run, fields)
                        results.append(
                            {"run": run, "subset": seed, "version": version, "seconds": seconds}
                        )
            finally:
                stop(proc)
        for run, recipe in (
            ("resnet50_scratch", COURSE_RECIPE),
            ("resnet50_scratch_defaults", DEFAULTS_RECIPE),
            ("resnet50_scratch_long", LONG_RECIPE),
            ("lenet5_scratch", LENET_RECIPE),
        ):
            if run not in runs:
                continue
            extra = [x for k, v in fields.items() for x in (f"--{k.replace('_', '-')}", v)]
            started = time.perf_counter()
            cmd = [sys.executable, "-m", "app", "train", "--data", str(pool), "--model", run]
            out = subprocess.run(
                [*cmd, *recipe, *extra],
                cwd=ROOT,
                env=cli_env(work),
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
            version = json.loads(out.stdout.strip().splitlines()[-1])["version"]
            seconds = time.perf_counter() - started
            results.append({"run": run, "version": version, "seconds": seconds})
        for r in results:
            r["held_out_accuracy"] = evaluate(work, r["run"], r["version"], held)
            r.update(chosen(work, r["run"], r["version"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores, {cpu_name()}; {args.label or 'defaults'} {fields}")
    print(
        f"held-out: {held_count} SIGNS photos (split seed {args.split_seed}, stratified 20%),"
        " never trained on\n"
    )
    print("| run | subset | held-out accuracy | validation accuracy | epochs run | time |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['run']} | {r.get('subset', '')} | {r['held_out_accuracy']:.3f}"
            f" | {r['validation_accuracy']:.3f} | {r['epochs_run']} | {r['seconds'] / 60:.1f} min |"
        )
    for run in dict.fromkeys(r["run"] for r in results if "subset" in r):
        accuracy = [r["held_out_accuracy"] for r in results if r["run"] == run]
        minutes = [r["seconds"] / 60 for r in results if r["run"] == run]
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        print(
            f"\n{run}: held-out accuracy {statistics.mean(accuracy):.3f} +- {spread:.3f}"
            f" (mean +- standard deviation of {len(accuracy)} subsets; min {min(accuracy):.3f}),"
            f" time {statistics.mean(minutes):.1f} min (max {max(minutes):.1f})"
        )
    for r in results:
        print(f"\n{r['run']} {r.get('subset', '')}: {json.dumps(r['training'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
