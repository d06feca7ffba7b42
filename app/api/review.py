"""Learning from traffic: a model's capture rule (``/models/{name}/capture``), the review
queue of kept predictions (``/review``), and the dataset an accepted image goes to."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam

from app.api.deps import Admin, Captures, Datasets, Manager, Read, ReadPhotos, Registry, Train
from app.errors import ConvserveError
from app.names import NAME_PATTERN, NAME_REGEX
from app.schemas import (
    CaptureSettings,
    CaptureStatus,
    Deleted,
    ReviewAction,
    ReviewItem,
    ReviewList,
    ReviewResult,
)
from app.serving.manager import ModelManager
from app.storage.captures import CaptureRule, CaptureStore
from app.storage.datasets import DatasetStore, NewImage
from app.storage.registry import ModelRegistry

router = APIRouter(tags=["review"])
ModelName = PathParam(pattern=NAME_PATTERN.pattern, description="the model's name")
EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/webp": "webp",
    "image/tiff": "tif",
}


# -- the capture rule ---------------------------------------------------------------------


def _status(captures: CaptureStore, name: str) -> CaptureStatus:
    rule = captures.rule(name)
    return CaptureStatus(
        model=name,
        enabled=rule is not None,
        settings=CaptureSettings(**asdict(rule)) if rule is not None else None,
        **captures.counts(name),
    )


@router.put("/models/{name}/capture", response_model=CaptureStatus, dependencies=[Admin])
async def set_capture(
    body: CaptureSettings, manager: Manager, captures: Captures, name: str = ModelName
) -> CaptureStatus:
    """Turn capture on for the model (or change its rule): predictions it keeps wait in
    the review queue. Missing fields take their defaults."""
    manager.state(name)  # 404 for a model that is not served
    await asyncio.to_thread(captures.set_rule, name, CaptureRule(**body.model_dump()))
    await asyncio.to_thread(manager.capture.reload)
    return await asyncio.to_thread(_status, captures, name)


@router.get("/models/{name}/capture", response_model=CaptureStatus, dependencies=[Read])
def get_capture(manager: Manager, captures: Captures, name: str = ModelName) -> CaptureStatus:
    """The model's capture rule (if on) and what it keeps now."""
    manager.state(name)
    return _status(captures, name)


@router.delete("/models/{name}/capture", response_model=CaptureStatus, dependencies=[Admin])
async def stop_capture(
    manager: Manager, captures: Captures, name: str = ModelName
) -> CaptureStatus:
    """Turn capture off. What was kept stays in the queue (``DELETE /review?model=`` deletes
    it)."""
    manager.state(name)
    await asyncio.to_thread(captures.delete_rule, name)
    await asyncio.to_thread(manager.capture.reload)
    return await asyncio.to_thread(_status, captures, name)


# -- the queue ----------------------------------------------------------------------------


def _item(row: dict[str, Any]) -> ReviewItem:
    return ReviewItem(**row, image_url=f"/review/{row['id']}/image")


def target_dataset(
    manager: ModelManager,
    registry: ModelRegistry,
    captures: CaptureStore,
    model: str,
    version: int | None = None,
) -> str | None:
    """Where a model's accepted images go: its capture rule's dataset, else the stored
    dataset the captured version (or the active one) trained on."""
    rule = captures.rule(model)
    if rule is not None and rule.dataset:
        return rule.dataset
    candidates = [version] if version is not None else []
    state = manager.models.get(model)
    if state is not None and state.active is not None:
        candidates.append(state.active.version)
    for v in candidates:
        try:
            dataset = registry.metadata(model, v).get("dataset") or {}
        except Exception:  # a version deleted since
            continue
        if dataset.get("name"):
            return str(dataset["name"])
    return None


@router.get("/review", response_model=ReviewList, dependencies=[ReadPhotos])
def list_review(
    manager: Manager,
    registry: Registry,
    captures: Captures,
    model: str | None = Query(None, pattern=NAME_REGEX, description="only this model's"),
    order: Literal["newest", "least_confident", "class"] = Query(
        "newest", description="newest first, least confident first, or by predicted class"
    ),
    label: str | None = Query(None, description="only images predicted as this class"),
    offset: int = Query(0, ge=0, le=2**31 - 1),  # the database's integers
    limit: int = Query(50, ge=1, le=500),
) -> ReviewList:
    """Kept predictions waiting for review, each with the model's answer."""
    rows, total = captures.page(model, order, label, offset, limit)
    classes: list[str] = []
    dataset = None
    if model is not None:
        state = manager.models.get(model)
        if state is not None and state.active is not None:
            classes = list(state.active.class_names)
        dataset = target_dataset(manager, registry, captures, model)
    return ReviewList(
        items=[_item(r) for r in rows],
        total=total,
        offset=offset,
        limit=limit,
        order=order,
        classes=classes,
        dataset=dataset,
    )


@router.delete("/review", response_model=Deleted, dependencies=[Train])
def delete_all(
    captures: Captures,
    model: str = Query(..., pattern=NAME_REGEX, description="the model whose captures go"),
) -> Deleted:
    """Delete every kept prediction of a model."""
    return Deleted(deleted=captures.delete_model(model))


@router.get(
    "/review/export",
    response_class=Response,
    dependencies=[Admin],  # hands out every kept image at once
    responses={200: {"content": {"application/zip": {}}, "description": "the kept images"}},
)
def export_review(
    captures: Captures,
    model: str = Query(..., pattern=NAME_REGEX, description="the model whose captures"),
) -> Response:
    """A model's kept predictions as a .zip: ``<guess>/<id>.<ext>`` and ``captures.json``
    (each image's answer, version, time and file name)."""
    buffer = io.BytesIO()
    index = []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        offset = 0
        while True:
            rows, _ = captures.page(model, "newest", None, offset, 500)
            if not rows:
                break
            offset += len(rows)
            for row in rows:
                try:
                    _, data = captures.image(row["id"])
                except ConvserveError:  # deleted meanwhile
                    continue
                path = f"{row['label']}/{row['id']}.{EXTENSIONS.get(row['media_type'], 'img')}"
                zf.writestr(path, data)
                index.append({**row, "path": path})
        zf.writestr("captures.json", json.dumps(index, indent=1))
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{model}-captures.zip"'},
    )


@router.get("/review/{capture_id}", response_model=ReviewItem, dependencies=[ReadPhotos])
def get_item(capture_id: str, captures: Captures) -> ReviewItem:
    return _item(captures.get(capture_id))


@router.get(
    "/review/{capture_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "the image as it was sent"}},
    dependencies=[ReadPhotos],
)
def get_image(capture_id: str, captures: Captures) -> Response:
    item, data = captures.image(capture_id)
    return Response(
        data, media_type=item["media_type"], headers={"Cache-Control": "private, max-age=3600"}
    )


@router.delete("/review/{capture_id}", status_code=204, dependencies=[Train])
def delete_item(capture_id: str, captures: Captures) -> Response:
    captures.delete(capture_id)
    return Response(status_code=204)


def accept(
    captures: CaptureStore,
    datasets: DatasetStore,
    manager: ModelManager,
    registry: ModelRegistry,
    capture_id: str,
    label: str | None,
    dataset: str | None,
) -> ReviewResult:
    """Add a kept image to its dataset (a new version, the image recorded as coming from a
    prediction), then take it off the queue."""
    item, data = captures.image(capture_id)
    name = dataset or target_dataset(manager, registry, captures, item["model"], item["version"])
    if name is None:
        raise ConvserveError(
            "no_dataset",
            f"model {item['model']!r} did not train on a stored dataset: name one"
            ' ({"action": "accept", "dataset": "..."}), or set it in the capture rule',
            409,
        )
    label = label or item["label"]
    classes = set(datasets.manifest(name)["classes"]) if name in datasets.names() else set()
    origin = {
        "model": item["model"],
        "version": item["version"],
        "predicted": item["label"],
        "score": item["score"],
        "captured_at": item["created_at"],
        "capture": capture_id,
    }
    filename = item["filename"] or f"{capture_id}.{EXTENSIONS.get(item['media_type'], 'img')}"
    change = datasets.add(
        name,
        [NewImage(label, filename, source="prediction", data=data, origin=origin)],
        create=True,
    )
    captures.delete(capture_id)
    image_id = change.added[0] if change.added else change.duplicates[0]["id"]
    return ReviewResult(
        id=capture_id,
        action="accept",
        label=label,
        dataset=name,
        version=change.version,
        image_id=image_id,
        new_class=label not in classes,
    )


@router.post("/review/{capture_id}", response_model=ReviewResult, dependencies=[Train])
def review_item(
    capture_id: str,
    body: ReviewAction,
    captures: Captures,
    datasets: Datasets,
    manager: Manager,
    registry: Registry,
) -> ReviewResult:
    """``accept``: the image joins the dataset under ``label`` (default the model's guess; a
    new name makes a new class) as its next version; ``discard``: it is deleted."""
    if body.action == "discard":
        captures.delete(capture_id)
        return ReviewResult(id=capture_id, action="discard")
    return accept(captures, datasets, manager, registry, capture_id, body.label, body.dataset)
