"""Label health on real photos with wrong labels: how many of the flipped labels the
service points at.

Takes the shared SIGNS photos (1,080, six classes), moves a seeded random 5% of them to
another class (a wrong label), uploads them as a stored dataset, trains a version with
the defaults (``POST /finetune`` with ``dataset_name``: MobileNetV2 from the ImageNet
weights in ``../shared/weights``), then reads the dataset version's label-health report
(``GET /datasets/{name}/versions/1/health``, written by the training job) and prints:

- precision and recall at k = the number of wrong labels: of the k images whose given label
  the out-of-fold predictions believe least, the share that are wrong (= the share of the
  wrong ones found among them);
- the same for the suspects cleanlab flagged (its own count): the share of them that are
  wrong, and the share of the wrong ones they hold;
- the report's cost (features, out-of-fold fits, hashes) and the job's wall time.

    python bench/label_health.py [--seeds 1,2,3] [--share 0.05] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import WEIGHTS
from serve_bench import SIGNS, cpu_name, start_service, stop, wait_ready


def noisy_archive(share: float, seed: int) -> tuple[bytes, set[str]]:
    """SIGNS as a .zip with ``share`` of the photos under a wrong class; the flipped
    photos' file names."""
    rng = random.Random(seed)
    classes = sorted(p.name for p in SIGNS.iterdir() if p.is_dir())
    photos = [(c, f) for c in classes for f in sorted((SIGNS / c).glob("*.jpg"))]
    flipped = set(rng.sample(range(len(photos)), round(len(photos) * share)))
    names = set()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for n, (label, path) in enumerate(photos):
            if n in flipped:
                label = rng.choice([c for c in classes if c != label])
                names.add(path.name)
            zf.write(path, f"{label}/{path.name}")
    return buffer.getvalue(), names


def run(url: str, seed: int, share: float) -> dict[str, Any]:
    name = f"signs-noisy-{seed}"
    archive, flipped = noisy_archive(share, seed)
    client = httpx.Client(base_url=url, timeout=600)
    r = client.post("/datasets", data={"name": name}, files={"archive": ("signs.zip", archive)})
    r.raise_for_status()
    started = time.perf_counter()
    r = client.post("/finetune", data={"dataset_name": name, "model": name})
    r.raise_for_status()
    job_url = r.headers["location"]
    while (job := client.get(job_url).json())["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['status']}: {job.get('error')}")
    job_seconds = time.perf_counter() - started
    report = client.get(f"/datasets/{name}/versions/1/health").json()
    # The wrong labels the dataset holds: a photo stored once (SIGNS has exact copies) under
    # a class that is not its own.
    wrong = set()
    offset = 0
    while page := client.get(
        f"/datasets/{name}/images", params={"offset": offset, "limit": 500}
    ).json()["items"]:
        offset += len(page)
        wrong |= {
            i["id"]
            for i in page
            if i["filename"] in flipped and not (SIGNS / i["label"] / i["filename"]).exists()
        }
    k = len(wrong)
    # The k images whose given label the out-of-fold predictions believe least.
    hits_at_k = sum(i in wrong for i in report["least_confident"][:k])
    flagged = report["suspects_found"]
    listed = min(flagged, len(report["suspects"]))
    hits_flagged = sum(s["id"] in wrong for s in report["suspects"][:listed])
    return {
        "seed": seed,
        "images": report["images"],
        "flipped": k,
        # With k = the number of wrong labels, precision and recall at k are one number.
        "precision_at_k": round(hits_at_k / k, 3),
        "recall_at_k": round(hits_at_k / k, 3),
        "flagged": flagged,
        "precision_flagged": round(hits_flagged / listed, 3) if listed else None,
        "recall_flagged": round(hits_flagged / k, 3),
        "near_duplicates": report["duplicates_found"],
        "out_of_fold_accuracy": report["out_of_fold_accuracy"],
        "report_seconds": report["seconds"],
        "job_seconds": round(job_seconds, 1),
        "validation_accuracy": job["result"]["metrics"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not WEIGHTS.exists() or not SIGNS.is_dir():
        sys.exit(f"needs {WEIGHTS} and {SIGNS}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        url, proc = start_service(
            Path(tmp), ["none"], "auto", 224, run_jobs=True, pretrained=str(WEIGHTS)
        )
        try:
            wait_ready(url, proc)
            for seed in (int(s) for s in args.seeds.split(",")):
                result = run(url, seed, args.share)
                print(json.dumps(result), flush=True)
                results.append(result)
        finally:
            stop(proc)
    summary = {
        "machine": cpu_name(),
        "share": args.share,
        "runs": results,
        "mean_precision_at_k": round(sum(r["precision_at_k"] for r in results) / len(results), 3),
        "mean_precision_flagged": round(
            sum(r["precision_flagged"] or 0 for r in results) / len(results), 3
        ),
        "mean_recall_flagged": round(sum(r["recall_flagged"] for r in results) / len(results), 3),
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
