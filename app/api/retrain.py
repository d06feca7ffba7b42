"""Retrain from what was reviewed (``POST /models/{name}/retrain``), and compare two versions
on the same images (``GET /models/{name}/compare``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Response

from app.api.deps import (
    Datasets,
    Jobs,
    Manager,
    Metrics,
    Read,
    Registry,
    SettingsDep,
    Supervisor,
    Train,
)
from app.errors import ConvserveError
from app.jobs.intake import queue_job
from app.schemas import Comparison, ErrorBody, JobCreated, RetrainRequest
from app.serving.inference import Inference
from app.storage.datasets import DatasetStore
from app.storage.registry import ModelRegistry
from app.training.params import TrainParams

router = APIRouter(prefix="/models", tags=["finetune"])
COMPARE_BATCH = 16


def _dataset(meta: dict[str, Any], name: str, version: int) -> dict[str, Any]:
    dataset = meta.get("dataset") or {}
    if not dataset.get("name"):
        raise ConvserveError(
            "no_dataset",
            f"{name} version {version} did not train on a stored dataset; train with"
            " POST /finetune and dataset_name",
            409,
        )
    return dataset


@router.post("/{name}/retrain", status_code=202, response_model=JobCreated, dependencies=[Train])
async def retrain(
    name: str,
    response: Response,
    settings: SettingsDep,
    jobs: Jobs,
    manager: Manager,
    datasets: Datasets,
    supervisor: Supervisor,
    body: RetrainRequest | None = None,
) -> JobCreated:
    """Train a new version from the latest version of the dataset the active version
    trained on (reviewed images included), with the same parameters."""
    body = body or RetrainRequest()
    loaded = await manager.resolve(name)
    active, version = loaded.metadata, loaded.version
    dataset = _dataset(active, name, version)
    params = TrainParams(
        **{k: v for k, v in (active.get("params") or {}).items() if k in TrainParams.model_fields}
    )
    row = await asyncio.to_thread(
        queue_job,
        settings,
        jobs,
        None,
        name,
        params,
        body.promote,
        datasets,
        dataset["name"],
        body.dataset_version,
    )
    await supervisor.submit(row["id"])
    response.headers["Location"] = f"/finetune/{row['id']}"
    return JobCreated(job_id=row["id"], status=row["status"])


def fair_images(
    registry: ModelRegistry, datasets: DatasetStore, name: str, a: int, b: int
) -> tuple[list[tuple[str, str]], str]:
    """The images to compare versions ``a`` and ``b`` on, with their labels, and why they
    are fair: version ``b``'s validation images that version ``a`` did not train on.
    (Validation splits are drawn anew as a dataset grows, so some of ``b``'s validation
    images may have trained ``a``; those are left out.)"""
    meta_a, meta_b = registry.metadata(name, a), registry.metadata(name, b)
    data_b = _dataset(meta_b, name, b)
    manifest_b = datasets.manifest(data_b["name"], int(data_b["version"]))
    validation = [i for i in data_b.get("validation", []) if i in manifest_b["images"]]
    data_a = meta_a.get("dataset") or {}
    basis = f"the validation images of version {b}"
    if data_a.get("name") == data_b["name"] and data_a.get("validation") is not None:
        try:
            trained_a = set(datasets.manifest(data_a["name"], int(data_a["version"]))["images"])
        except ConvserveError:
            trained_a = None
        if trained_a is not None:
            trained_a -= set(data_a["validation"])
            kept = [i for i in validation if i not in trained_a]
            basis += f" that version {a} did not train on ({len(kept)} of {len(validation)})"
            validation = kept
        else:
            basis += f" (version {a}'s dataset version is deleted: it may have trained on some)"
    else:
        basis += f" (version {a} trained on other images: it may have seen some)"
    return [(i, manifest_b["images"][i]["label"]) for i in validation], basis


@router.get(
    "/{name}/compare",
    response_model=Comparison,
    responses={
        409: {"model": ErrorBody, "description": "a version not trained on a stored dataset"}
    },
    dependencies=[Read],
)
async def compare(
    name: str,
    manager: Manager,
    metrics: Metrics,
    settings: SettingsDep,
    registry: Registry,
    datasets: Datasets,
    a: int = Query(..., ge=1, description="one version (the active one, say)"),
    b: int = Query(..., ge=1, description="the other (the new one)"),
) -> Comparison:
    """Both versions' accuracy on the same images: ``b``'s validation images that ``a``
    did not train on."""
    manager.state(name)
    for v in (a, b):
        if v not in registry.versions(name):
            raise ConvserveError("version_not_found", f"model {name!r} has no version {v}", 404)
    images, basis = await asyncio.to_thread(fair_images, registry, datasets, name, a, b)
    dataset = registry.metadata(name, b)["dataset"]["name"]
    blobs = [await asyncio.to_thread(datasets.image_bytes, dataset, i) for i, _ in images]
    labels = [label for _, label in images]
    results: dict[str, Any] = {}
    for v in (a, b):
        job = Inference(manager, metrics, settings, "convserve", name)
        guesses: list[str] = []
        for start in range(0, len(blobs), COMPARE_BATCH):
            chunk = blobs[start : start + COMPARE_BATCH]
            answer = await job.classify(v, chunk, [None] * len(chunk))
            loaded, rows = answer.loaded, answer.rows
            guesses += [loaded.class_names[int(r.argmax())] for r in rows]
        per_class: dict[str, dict[str, int]] = {}
        for label, guess in zip(labels, guesses, strict=True):
            entry = per_class.setdefault(label, {"images": 0, "correct": 0})
            entry["images"] += 1
            entry["correct"] += int(label == guess)
        correct = sum(e["correct"] for e in per_class.values())
        results[str(v)] = {
            "accuracy": round(correct / len(labels), 4) if labels else None,
            "correct": correct,
            "per_class": per_class,
        }
    return Comparison(model=name, images=len(images), basis=basis, versions=results)
