"""``/models``: what is served, every version, promote/roll back and delete."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import FileResponse

from app.api.deps import (
    Admin,
    Caller,
    Captures,
    Jobs,
    Manager,
    Metrics,
    Read,
    ReadPhotos,
    Registry,
    Rollouts,
    SettingsDep,
)
from app.api.rollout import status
from app.errors import ConvserveError
from app.export import Format, export_version
from app.schemas import (
    ErrorBody,
    ModelDetail,
    ModelInfo,
    ModelList,
    ValidationImage,
    ValidationImages,
    VersionInfo,
)
from app.serving.inference import Inference
from app.serving.manager import ModelState
from app.storage.registry import ModelRegistry

router = APIRouter(prefix="/models", tags=["models"])

VersionPath = Path(ge=1, description="version number")


def _version_info(registry: ModelRegistry, name: str, version: int) -> VersionInfo:
    meta = registry.metadata(name, version)
    return VersionInfo(
        **{k: v for k, v in meta.items() if k in VersionInfo.model_fields and v is not None}
    )


def model_info(state: ModelState, registry: ModelRegistry) -> ModelInfo:
    info = ModelInfo(
        name=state.name,
        status=state.status,
        reason=state.reason,
        last_error=state.last_error,
        versions=registry.versions(state.name),
    )
    if state.active is not None:
        meta = state.active.metadata
        info.active_version = state.active.version
        info.architecture = meta.get("architecture") or meta.get("base")
        info.input_size = int(meta["image_size"])
        info.class_names = list(meta["class_names"])
        info.trained = bool(meta.get("trained", True))
        info.backend = state.active.predictor.backend
        info.precision = state.active.predictor.precision
        info.precision_reason = state.active.precision_reason
        info.metrics = meta.get("metrics")
    return info


def model_detail(state: ModelState, registry: ModelRegistry) -> ModelDetail:
    return ModelDetail(
        **model_info(state, registry).model_dump(),
        version_details=[
            _version_info(registry, state.name, v) for v in registry.versions(state.name)
        ],
    )


@router.get("", response_model=ModelList)
def list_models(caller: Annotated[Caller, Read], manager: Manager, registry: Registry) -> ModelList:
    """The served models (those a key is limited to)."""
    allowed = caller.models
    return ModelList(
        models=[
            model_info(s, registry)
            for name, s in manager.models.items()
            if allowed is None or name in allowed
        ]
    )


@router.get("/{name}", response_model=ModelDetail, dependencies=[Read])
async def get_model(
    name: str, manager: Manager, registry: Registry, rollouts: Rollouts
) -> ModelDetail:
    """The model, every version, and its running rollout with the live figures."""
    detail = await asyncio.to_thread(model_detail, manager.state(name), registry)
    if name in manager.rollouts.running:
        detail.rollout = (await status(manager, rollouts, name)).model_dump()
    return detail


@router.post(
    "/{name}/versions/{version}/activate", response_model=ModelDetail, dependencies=[Admin]
)
async def activate_version(
    name: str, manager: Manager, registry: Registry, version: int = VersionPath
) -> ModelDetail:
    """Load and warm up the version, then serve it (promote or roll back)."""
    state = await manager.activate(name, version)
    return model_detail(state, registry)


@router.delete("/{name}/versions/{version}", response_model=ModelDetail, dependencies=[Admin])
async def delete_version(
    name: str, manager: Manager, registry: Registry, version: int = VersionPath
) -> ModelDetail:
    """Delete a version that is not active (nor the candidate of a running rollout)."""
    if manager.rollouts.candidate(name) == version:
        raise ConvserveError(
            "version_in_rollout",
            f"version {version} of {name!r} is being rolled out: abort or promote the"
            " rollout first",
            409,
        )
    state = await manager.delete(name, version)
    return model_detail(state, registry)


@router.delete("/{name}", status_code=204, dependencies=[Admin])
async def delete_model(
    name: str,
    manager: Manager,
    jobs: Jobs,
    settings: SettingsDep,
    captures: Captures,
    rollouts: Rollouts,
) -> None:
    """Delete a whole model, every version of it, and its captured predictions. Refused for
    the default model and while a fine-tuning job for it is queued or running."""
    manager.state(name)  # 404 for an unknown model
    if name == settings.default_model:
        raise ConvserveError(
            "model_is_default",
            f"{name!r} is the default model (CONVSERVE_DEFAULT_MODEL); it cannot be deleted",
            409,
        )
    busy = await asyncio.to_thread(jobs.active_for_model, name)
    if busy:
        raise ConvserveError(
            "model_in_training",
            f"job {busy[0]} is training {name!r}; cancel it or wait for it to end",
            409,
        )
    await manager.delete_model(name)
    await asyncio.to_thread(captures.delete_model, name, True)
    await asyncio.to_thread(rollouts.delete_model, name)
    await asyncio.to_thread(manager.capture.reload)


def _class_index(classes: list[str], value: str | None, field: str) -> int | None:
    if value is None:
        return None
    if value not in classes:
        raise ConvserveError(
            "unknown_class", f"{field}: the version has no class named {value!r}", 422
        )
    return classes.index(value)


@router.get(
    "/{name}/versions/{version}/validation",
    response_model=ValidationImages,
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    dependencies=[ReadPhotos],
)
def validation_images(
    name: str,
    registry: Registry,
    version: int = VersionPath,
    true: str | None = Query(None, description="only images of this class"),
    predicted: str | None = Query(None, description="only images predicted as this class"),
) -> ValidationImages:
    """Validation images a trained version kept, with what it predicted for each: the
    images behind a cell of its confusion matrix."""
    meta = registry.metadata(name, version)
    kept = registry.validation_samples(name, version)
    if kept is None:
        raise ConvserveError(
            "no_validation_images",
            f"{name} version {version} kept no validation images (only versions trained"
            " by this release of convserve keep them)",
            404,
        )
    classes = list(meta["class_names"])
    t = _class_index(classes, true, "true")
    p = _class_index(classes, predicted, "predicted")
    in_cell = None
    matrix = (meta.get("metrics") or {}).get("confusion_matrix")
    if t is not None and p is not None and matrix:
        in_cell = int(matrix[t][p])
    base = f"/models/{name}/versions/{version}/validation"
    return ValidationImages(
        model=name,
        version=version,
        true=true,
        predicted=predicted,
        in_cell=in_cell,
        per_cell=int(kept["per_cell"]),
        images=[
            ValidationImage(
                url=f"{base}/{item['file']}",
                true=classes[item["true"]],
                predicted=classes[item["predicted"]],
                score=item["score"],
                source=item.get("source"),
            )
            for item in kept["images"]
            if (t is None or item["true"] == t) and (p is None or item["predicted"] == p)
        ],
    )


@router.get(
    "/{name}/versions/{version}/validation/{file}",
    response_class=FileResponse,
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorBody}},
    dependencies=[ReadPhotos],
)
def validation_image(
    name: str, file: str, registry: Registry, version: int = VersionPath
) -> FileResponse:
    """One kept validation image (a small JPEG)."""
    path = registry.validation_image(name, version, file)
    if path is None:
        raise ConvserveError(
            "image_not_found", f"{name} version {version} has no validation image {file!r}", 404
        )
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get(
    "/{name}/versions/{version}/validation/{file}/gradcam",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorBody}},
    dependencies=[ReadPhotos],
)
async def validation_gradcam(
    name: str,
    file: str,
    registry: Registry,
    manager: Manager,
    metrics: Metrics,
    settings: SettingsDep,
    version: int = VersionPath,
    label: str | None = Query(None, description="the class to explain (default the predicted)"),
) -> Response:
    """A kept validation image's Grad-CAM map (an RGBA PNG the size the model saw) for the
    class the version predicted for it, or ``label``: the confusion matrix's images can
    show where their answers came from."""
    path = registry.validation_image(name, version, file)
    samples = registry.validation_samples(name, version) if path is not None else None
    item = next((i for i in (samples or {}).get("images", []) if i["file"] == file), None)
    if path is None or item is None:
        raise ConvserveError(
            "image_not_found", f"{name} version {version} has no validation image {file!r}", 404
        )
    classes = registry.metadata(name, version)["class_names"]
    job = Inference(manager, metrics, settings, "convserve", name)
    explained = await job.explain_image(
        version, path.read_bytes(), label or classes[item["predicted"]]
    )
    return Response(
        base64.b64decode(explained["png"]),
        media_type="image/png",
        headers={"Cache-Control": "max-age=3600", "X-Explained-Class": explained["label"]},
    )


@router.get(
    "/{name}/versions/{version}/export",
    response_class=FileResponse,
    dependencies=[Admin],
    responses={
        200: {"content": {"application/zip": {}}},
        404: {"model": ErrorBody},
        422: {"model": ErrorBody},
        501: {"model": ErrorBody},
    },
)
def export(
    name: str,
    registry: Registry,
    version: int = VersionPath,
    format: Format = Query(
        "keras", description="keras, savedmodel (TensorFlow), tflite (LiteRT), onnx or openvino"
    ),
) -> FileResponse:
    """The version as a zip for another runtime: the model, ``labels.txt`` and a README
    (input size and range, output order, how to load it). Built on the first request
    (seconds to a minute), then kept."""
    path = export_version(registry, name, version, format)
    return FileResponse(
        path, media_type="application/zip", filename=f"{name}-v{version}-{format}.zip"
    )
