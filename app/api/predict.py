"""``POST /predict``: classify one or more uploaded images."""

from __future__ import annotations

import time

from fastapi import APIRouter, File, Query, Request, UploadFile

from app.api.deps import Manager, Metrics, SettingsDep
from app.errors import ConvserveError
from app.schemas import ImagePrediction, Label, PredictResponse
from app.serving.manager import LoadedVersion
from app.serving.tta import TTA

router = APIRouter(tags=["predict"])


def _check_multipart(request: Request) -> None:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ConvserveError(
            "unsupported_media_type",
            "send the images as multipart/form-data 'file' parts",
            415,
        )


async def _read_all(files: list[UploadFile], limit: int) -> list[bytes]:
    blobs = []
    for upload in files:
        if upload.size is not None and upload.size > limit:
            raise ConvserveError(
                "file_too_large",
                f"{upload.filename or 'a file'} is {upload.size} bytes, over the limit of {limit}",
                413,
            )
        blobs.append(await upload.read())
    return blobs


def _top(loaded: LoadedVersion, row: object, k: int) -> list[Label]:
    import numpy as np

    probs = np.asarray(row)
    names = loaded.class_names
    k = min(k, probs.shape[0])
    best = np.argpartition(-probs, k - 1)[:k]
    best = best[np.argsort(-probs[best], kind="stable")]
    return [Label(label=names[i], index=int(i), score=float(probs[i])) for i in best]


@router.post("/predict", response_model=PredictResponse)
async def predict(
    request: Request,
    manager: Manager,
    metrics: Metrics,
    settings: SettingsDep,
    file: list[UploadFile] = File(..., description="one or more images"),
    model: str | None = Query(None, description="model name; default: the default model"),
    version: int | None = Query(None, ge=1, description="version; default: the active one"),
    top_k: int = Query(5, ge=1, le=1000),
    tta: TTA = Query(
        "none",
        description="test-time augmentation: flip averages the image and its mirror (2"
        " views); crops the centre and corner crops of the image at 8/7 scale and their"
        " mirrors (10 views)",
    ),
) -> PredictResponse:
    name = model or settings.default_model
    label = name if name in manager.models else "unknown"
    started, status, served = time.perf_counter(), 500, "none"
    try:
        _check_multipart(request)
        if len(file) > settings.max_files_per_request:
            raise ConvserveError(
                "too_many_files",
                f"{len(file)} files in one request; the limit is {settings.max_files_per_request}",
                413,
            )
        await manager.resolve(name, version)  # an unknown model or version: before reading
        blobs = await _read_all(file, settings.max_image_bytes)
        filenames = [f.filename for f in file]
        loaded, rows = await manager.classify(name, version, blobs, filenames, tta)
        served, status = str(loaded.version), 200
        metrics.images.labels(label, served).inc(len(rows))
        return PredictResponse(
            model=name,
            version=loaded.version,
            predictions=[
                ImagePrediction(filename=f.filename, top=_top(loaded, row, top_k))
                for f, row in zip(file, rows, strict=True)
            ],
        )
    except ConvserveError as exc:
        status = exc.status
        raise
    finally:
        labels = (label, served, str(status), "convserve")
        metrics.requests.labels(*labels).inc()
        metrics.latency.labels(*labels).observe(time.perf_counter() - started)
