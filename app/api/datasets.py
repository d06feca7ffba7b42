"""``/datasets``: datasets the service keeps (create, grow, relabel, version, export), and
the dataset check a fine-tuning job runs, without the job."""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from PIL import Image
from starlette.background import BackgroundTask

from app.api.deps import (
    Admin,
    Datasets,
    Jobs,
    Read,
    ReadPhotos,
    SettingsDep,
    Train,
    TrainCheck,
    TrainUpload,
    charge_stored,
    refund_stored,
)
from app.data.datasets import DatasetSummary
from app.errors import ConvserveError
from app.jobs.intake import (
    add_archive_to_dataset,
    add_files_to_dataset,
    check_only,
    stored_dataset_summary,
)
from app.names import LABEL_REGEX, LABEL_RULE, NAME_PATTERN, NAME_REGEX
from app.schemas import (
    DatasetChange,
    DatasetDiff,
    DatasetImages,
    DatasetInfo,
    DatasetList,
    DatasetReport,
    DatasetVersionDetail,
    ErrorBody,
    NewClass,
    Relabel,
)
from app.storage.datasets import DATASET_NAME_RULE, DatasetStore, check_name

# A dataset name in a path: the rule is in the document, so a bad one is 422 up front.
DatasetName = Annotated[
    str, PathParam(pattern=NAME_PATTERN.pattern, description="the dataset's name")
]

router = APIRouter(prefix="/datasets", tags=["datasets"])
THUMBNAIL_SIZE = 160
MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
}


VersionQuery = Query(None, ge=1, description="a dataset version; default the latest")


def dataset_info(datasets: DatasetStore, name: str, with_versions: bool = True) -> DatasetInfo:
    summary = datasets.summary(name, with_versions)
    warnings = DatasetSummary(list(summary["classes"]), summary["classes"]).warnings
    return DatasetInfo(**summary, warnings=warnings)


def _busy(jobs: Any, name: str, version: int | None = None) -> None:
    """409 while a queued or running job reads the dataset (or that version of it)."""
    for job in jobs.active_for_dataset(name):
        if version is None or job["version"] == version:
            raise ConvserveError(
                "dataset_in_use",
                f"job {job['id']} reads dataset {name!r} (version {job['version']});"
                " cancel it or wait for it to end",
                409,
            )


@router.post("/check", response_model=DatasetReport, dependencies=[TrainCheck], tags=["finetune"])
async def check_dataset(
    settings: SettingsDep,
    dataset: UploadFile = File(..., description=".zip, .tar or .tar.gz, one folder per class"),
    validation_split: float = Form(0.2, ge=0.05, le=0.5),
) -> Any:
    """Check an archive as ``POST /finetune`` would (same errors), and report its classes,
    images per class, skipped files with the reason, exact duplicates and warnings
    (imbalance, few images). Nothing is kept."""
    return await asyncio.to_thread(check_only, settings, dataset.file, validation_split)


@router.post("", status_code=201, response_model=DatasetChange, dependencies=[TrainUpload])
def create_dataset(
    request: Request,
    response: Response,
    settings: SettingsDep,
    datasets: Datasets,
    name: str = Form(..., pattern=NAME_REGEX, description=DATASET_NAME_RULE),
    # Given or left out (None), never null: the document types it as a file.
    archive: UploadFile = File(None, description="optional .zip, .tar or .tar.gz of class folders"),
) -> Any:
    """Create a dataset: empty, or from an archive of class folders (its version 1). Files
    that are not usable images are skipped and listed; exact copies are stored once."""
    check_name(name)
    if archive is None:
        change: dict[str, Any] = {**datasets.create(name).to_dict(), "skipped": []}
    else:
        change = add_archive_to_dataset(settings, datasets, name, archive.file, exists_ok=False)
        charge_stored(request, name)
    response.headers["Location"] = f"/datasets/{name}"
    return DatasetChange(name=name, **change)


@router.get("", response_model=DatasetList, dependencies=[Read])
def list_datasets(datasets: Datasets) -> DatasetList:
    """Every dataset, with its images per class in its latest version."""
    return DatasetList(
        datasets=[dataset_info(datasets, n, with_versions=False) for n in datasets.names()]
    )


@router.get("/{name}", response_model=DatasetInfo, dependencies=[Read])
def get_dataset(name: DatasetName, datasets: Datasets) -> DatasetInfo:
    """A dataset: images per class (latest version), warnings, and every version."""
    return dataset_info(datasets, name)


@router.delete("/{name}", status_code=204, dependencies=[Train])
def delete_dataset(request: Request, name: DatasetName, datasets: Datasets, jobs: Jobs) -> Response:
    """Delete a dataset and its images (refused while a job reads it). Model versions
    trained on it keep their record of it."""
    datasets.latest(name)  # 404 first
    _busy(jobs, name)
    datasets.delete(name)
    refund_stored(request, name)
    return Response(status_code=204)


@router.post(
    "/{name}/images", status_code=201, response_model=DatasetChange, dependencies=[TrainUpload]
)
def add_images(
    request: Request,
    name: DatasetName,
    settings: SettingsDep,
    datasets: Datasets,
    label: str = Query(
        ...,
        pattern=LABEL_REGEX,
        description=f"the class (a new name makes a new class): {LABEL_RULE}",
    ),
    file: list[UploadFile] = File(..., min_length=1, description="one or more images"),
    source: str = Query("api", pattern="^(api|console)$", description="recorded per image"),
) -> Any:
    """Add images to class ``label`` (a new version). What is not a usable image is
    skipped and listed; an image the dataset holds already is counted as a duplicate."""
    if len(file) > settings.max_files_per_request:
        raise ConvserveError(
            "too_many_files",
            f"{len(file)} files in one request; the limit is {settings.max_files_per_request}",
            413,
        )
    datasets.latest(name)  # 404 before reading the files
    files = [(f.filename or "image", f.file) for f in file]
    change = add_files_to_dataset(settings, datasets, name, label, files, source)
    if change["added"]:
        charge_stored(request, name)
    return DatasetChange(name=name, **change)


@router.get("/{name}/images", response_model=DatasetImages, dependencies=[ReadPhotos])
def list_images(
    name: DatasetName,
    datasets: Datasets,
    version: int | None = VersionQuery,
    label: str | None = Query(None, description="only this class"),
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=500),
) -> DatasetImages:
    """One page of a version's images, by class then file name, with their URLs."""
    page = datasets.images(name, version, label, offset, limit)
    for item in page["items"]:
        item["url"] = f"/datasets/{name}/images/{item['id']}"
        item["thumbnail_url"] = f"/datasets/{name}/images/{item['id']}?thumbnail=true"
    return DatasetImages(name=name, **page)


@router.get(
    "/{name}/images/{image_id}",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "the image, or a thumbnail"}},
    dependencies=[ReadPhotos],
)
def get_image(
    name: DatasetName,
    image_id: str,
    datasets: Datasets,
    thumbnail: bool = Query(False, description=f"a JPEG of at most {THUMBNAIL_SIZE} px"),
) -> Response:
    """An image as stored (or a small JPEG of it), while a stored version lists it."""
    data = datasets.image_bytes(name, image_id)
    headers = {"Cache-Control": "private, max-age=86400, immutable"}  # ids are content hashes
    with Image.open(io.BytesIO(data)) as img:
        if not thumbnail:
            return Response(data, media_type=MIME.get(img.format or "", "image/*"), headers=headers)
        img.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG: decode small
        small = img.convert("RGB")
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=80)
    return Response(out.getvalue(), media_type="image/jpeg", headers=headers)


@router.patch("/{name}/images/{image_id}", response_model=DatasetChange, dependencies=[Train])
def relabel_image(
    name: DatasetName, image_id: str, body: Relabel, datasets: Datasets
) -> DatasetChange:
    """Move an image to another class (a new version). A class the dataset does not have
    is made only with ``create_class: true``."""
    version = datasets.relabel(name, image_id, body.label, body.create_class)
    return DatasetChange(name=name, version=version)


@router.delete("/{name}/images/{image_id}", response_model=DatasetChange, dependencies=[Train])
def remove_image(name: DatasetName, image_id: str, datasets: Datasets) -> DatasetChange:
    """Remove an image from the dataset (a new version; older versions keep it)."""
    return DatasetChange(name=name, version=datasets.remove(name, image_id))


@router.post("/{name}/classes", status_code=201, response_model=DatasetChange, dependencies=[Train])
def add_class(name: DatasetName, body: NewClass, datasets: Datasets) -> DatasetChange:
    """Add an empty class (a new version)."""
    return DatasetChange(name=name, version=datasets.add_class(name, body.label))


@router.get("/{name}/versions/{version}", response_model=DatasetVersionDetail, dependencies=[Read])
def get_version(name: DatasetName, version: int, datasets: Datasets) -> DatasetVersionDetail:
    """A version: images per class, the change that made it and its difference from the
    version before it."""
    info = datasets.version_info(name, version)
    parent = info.get("parent")
    diff = DatasetDiff(**datasets.diff(name, parent, version)) if parent else None
    return DatasetVersionDetail(name=name, **info, diff=diff)


@router.delete("/{name}/versions/{version}", status_code=204, dependencies=[Train])
def delete_version(name: DatasetName, version: int, datasets: Datasets, jobs: Jobs) -> Response:
    """Delete an old version (not the latest). Images no other version lists are deleted
    with it; model versions trained on it keep their record (name, version, counts, the
    validation image ids)."""
    datasets.manifest(name, version)  # 404 first
    _busy(jobs, name, version)
    datasets.delete_version(name, version)
    return Response(status_code=204)


@router.get("/{name}/diff", response_model=DatasetDiff, dependencies=[Read])
def diff_versions(
    name: DatasetName,
    datasets: Datasets,
    old: int = Query(..., ge=1, description="the earlier version"),
    new: int = Query(..., ge=1, description="the later version"),
) -> DatasetDiff:
    """What changed between two versions: images added, removed and relabelled."""
    return DatasetDiff(**datasets.diff(name, old, new))


@router.get(
    "/{name}/versions/{version}/export",
    response_class=FileResponse,
    dependencies=[Admin],  # hands out every image, as a model export hands out its weights
    responses={200: {"content": {"application/zip": {}}, "description": "class folders"}},
)
def export_version(
    name: DatasetName, version: int, settings: SettingsDep, datasets: Datasets
) -> Any:
    """A version as a .zip of class folders, the shape ``POST /datasets`` and
    ``POST /finetune`` take."""
    datasets.manifest(name, version)  # 404 first
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=settings.data_dir))
    target = folder / f"{name}-v{version}.zip"
    try:
        datasets.export(name, version, target)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        target,
        media_type="application/zip",
        filename=target.name,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


@router.get(
    "/{name}/versions/{version}/check",
    response_model=DatasetReport,
    responses={400: {"model": ErrorBody, "description": "the version cannot be trained on"}},
    dependencies=[Read],
)
def check_version(
    name: DatasetName,
    version: int,
    settings: SettingsDep,
    datasets: Datasets,
    validation_split: float = Query(0.2, ge=0.05, le=0.5),
) -> Any:
    """The dataset check of a stored version: the report ``POST /datasets/check`` gives
    for an upload, and the errors a job on this version would get. (Its images were
    checked when they were added, and it holds no two copies of one image.)"""
    return stored_dataset_summary(settings, datasets, name, version, validation_split)
