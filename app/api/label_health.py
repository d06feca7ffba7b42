"""Label health: ``/datasets/{name}/versions/{v}/health`` (the report a training job wrote,
or one computed on request) and ``/models/{name}/versions/{v}/health`` (a version's own)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Query

from app.api.datasets import DatasetName
from app.api.deps import Datasets, Read, Registry, Train
from app.errors import ConvserveError
from app.names import NAME_REGEX
from app.schemas import ErrorBody, HealthRequest
from app.storage.datasets import DatasetStore
from app.storage.objects import utc_now
from app.storage.registry import ModelRegistry
from app.training.health import HEALTH_FILE, stored_version_health

router = APIRouter(tags=["datasets"])


def trained_on(
    registry: ModelRegistry, name: str, version: int | None = None
) -> list[tuple[str, int]]:
    """Model versions that trained on dataset ``name`` (version ``version``), newest last."""
    found = []
    for model in registry.names():
        for v in registry.versions(model):
            try:
                dataset = registry.metadata(model, v).get("dataset") or {}
            except Exception:
                continue
            if dataset.get("name") == name and version in (None, dataset.get("version")):
                found.append((model, v))
    return sorted(found, key=lambda mv: registry.metadata(*mv).get("created_at", ""))


def _version_report(registry: ModelRegistry, model: str, version: int) -> dict[str, Any] | None:
    path = registry.version_dir(model, version) / HEALTH_FILE
    if not path.exists():
        return None
    report: dict[str, Any] = json.loads(path.read_text())
    report["model"] = {"name": model, "version": version}
    report.setdefault("created_at", registry.metadata(model, version).get("created_at"))
    return report


def _present(
    report: dict[str, Any], datasets: DatasetStore | None, name: str | None
) -> dict[str, Any]:
    """The report as the API gives it: image URLs, and the images a reviewer kept."""
    kept = datasets.confirmed(name) if datasets is not None and name else set()
    for group in ("suspects",):
        for item in report.get(group, []):
            item["kept"] = item["id"] in kept
            if name:
                item["thumbnail_url"] = f"/datasets/{name}/images/{item['id']}?thumbnail=true"
    if name:
        for pair in report.get("duplicates", []):
            pair["a_url"] = f"/datasets/{name}/images/{pair['a']}?thumbnail=true"
            pair["b_url"] = f"/datasets/{name}/images/{pair['b']}?thumbnail=true"
    return report


def _check_model(registry: ModelRegistry, model: str, version: int) -> None:
    if version not in registry.versions(model):
        raise ConvserveError("version_not_found", f"model {model!r} has no version {version}", 404)


@router.get(
    "/datasets/{name}/versions/{version}/health",
    responses={409: {"model": ErrorBody, "description": "no model trained on this dataset yet"}},
    dependencies=[Read],
)
async def dataset_health(
    name: DatasetName,
    version: int,
    datasets: Datasets,
    registry: Registry,
    model: str | None = Query(
        None,
        pattern=NAME_REGEX,
        description="judge with this model (default: the newest version trained on this dataset)",
    ),
    model_version: int | None = Query(None, ge=1, description="that model's version"),
    refresh: bool = Query(False, description="compute again, even if a report exists"),
) -> dict[str, Any]:
    """The label-health report of a dataset version: the images whose label the model
    doubts most (out-of-fold predictions), near duplicates, and the classes it confuses.
    A training job writes one for the version it trained on; otherwise (or with
    ``refresh``) it is computed now with a model trained on this dataset."""
    await asyncio.to_thread(datasets.manifest, name, version)  # 404 first
    if model is None and model_version is not None:
        raise ConvserveError("invalid_input", "model_version needs model", 400)
    if not refresh:
        cached = await asyncio.to_thread(datasets.health, name, version)
        if cached is not None and (model is None or cached.get("model", {}).get("name") == model):
            return _present(cached, datasets, name)
        for m, v in reversed(await asyncio.to_thread(trained_on, registry, name, version)):
            if model is None or m == model:
                report = await asyncio.to_thread(_version_report, registry, m, v)
                if report is not None:
                    return _present(report, datasets, name)
    if model is not None:
        versions = await asyncio.to_thread(registry.versions, model)
        if not versions:
            raise ConvserveError("model_not_found", f"no model named {model!r}", 404)
        chosen = (model, model_version or versions[-1])
        _check_model(registry, *chosen)
    else:
        candidates = await asyncio.to_thread(trained_on, registry, name)
        if not candidates:
            raise ConvserveError(
                "no_model",
                f"no model trained on dataset {name!r} yet: train one, or name a model"
                " (model=NAME) whose features should judge it",
                409,
            )
        chosen = candidates[-1]
    meta = await asyncio.to_thread(registry.metadata, *chosen)
    report = await asyncio.to_thread(
        stored_version_health,
        registry.model_path(*chosen),
        int(meta["image_size"]),
        datasets,
        name,
        version,
    )
    report["model"] = {"name": chosen[0], "version": chosen[1]}
    report["created_at"] = utc_now()
    await asyncio.to_thread(datasets.save_health, name, version, report)
    return _present(report, datasets, name)


@router.post("/datasets/{name}/health/keep", dependencies=[Train])
def keep_labels(name: DatasetName, body: HealthRequest, datasets: Datasets) -> dict[str, Any]:
    """Mark images whose label a reviewer checked and kept: reports show them as kept."""
    return {"name": name, "kept": len(datasets.confirm(name, body.keep))}


@router.get("/models/{name}/versions/{version}/health", dependencies=[Read])
def version_health(
    name: str, version: int, registry: Registry, datasets: Datasets
) -> dict[str, Any]:
    """The label-health report the job that trained this version wrote."""
    _check_model(registry, name, version)
    report = _version_report(registry, name, version)
    if report is None:
        raise ConvserveError(
            "health_not_found",
            f"{name} version {version} has no label-health report (trained with"
            " label_health=false, or before reports existed)",
            404,
        )
    dataset = report.get("dataset") or {}
    return _present(report, datasets if dataset.get("name") else None, dataset.get("name"))
