"""Accepting an upload: store it, check it, and queue the job, or refuse with a reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import IO, Any

from app.config import Settings
from app.data.archives import ArchiveLimits, extract_archive
from app.data.datasets import DatasetSummary, scan_dataset
from app.errors import ConvserveError, writing_to
from app.jobs.files import job_files_for
from app.jobs.runner import job_dir
from app.jobs.store import QUEUED, JobStore, new_job_id
from app.training.params import TrainParams

CHUNK = 1024 * 1024


def save_upload(source: IO[bytes], target: Path, limit: int) -> int:
    """Copy an upload to disk in chunks, refusing it once it passes ``limit`` bytes."""
    written = 0
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise ConvserveError(
                    "upload_too_large",
                    f"the upload is larger than the limit of {limit} bytes",
                    413,
                )
            out.write(chunk)
    return written


def check_upload(
    settings: Settings, upload: IO[bytes], folder: Path, validation_split: float
) -> DatasetSummary:
    """Store ``upload`` in ``folder``, extract it to ``folder/dataset`` and check it: the
    report a job will use. Raises the archive's or the dataset's error."""
    archive = folder / "upload"
    save_upload(upload, archive, settings.max_upload_bytes)
    limits = ArchiveLimits(settings.max_archive_files, settings.max_archive_bytes)
    extract_archive(archive, folder / "dataset", limits)
    archive.unlink()
    return scan_dataset(
        folder / "dataset",
        validation_split,
        settings.min_images_per_class,
        settings.max_image_pixels,
    )


def check_only(settings: Settings, upload: IO[bytes], validation_split: float) -> dict[str, Any]:
    """The dataset check of an upload, with nothing kept on disk (blocking)."""
    folder = settings.data_dir / "checks" / new_job_id()
    try:
        with writing_to("the service's data folder"):
            folder.mkdir(parents=True)
            return check_upload(settings, upload, folder, validation_split).to_dict()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def queue_job(
    settings: Settings,
    store: JobStore,
    upload: IO[bytes],
    model: str,
    params: TrainParams,
    promote: bool,
) -> dict[str, Any]:
    """Store, extract and check the dataset, then queue a job for it (blocking: call it
    from a thread). Nothing of a refused upload stays on disk."""
    if store.count(QUEUED) >= settings.max_queued_jobs:
        raise ConvserveError(
            "queue_full",
            f"{settings.max_queued_jobs} jobs are already queued; retry later",
            503,
            {"Retry-After": "60"},
        )
    job_id = new_job_id()
    folder = job_dir(settings, job_id)
    try:
        with writing_to("the service's data folder"):
            folder.mkdir(parents=True)
            summary = check_upload(settings, upload, folder, params.validation_split)
        files = job_files_for(settings)
        if files is not None:  # for a worker on another host
            try:
                files.put_dataset(job_id, folder)
            except Exception as exc:
                raise ConvserveError(
                    "job_files_unavailable",
                    f"the job files storage did not take the dataset ({type(exc).__name__});"
                    " retry later",
                    503,
                    {"Retry-After": "30"},
                ) from exc
        dataset = summary.to_dict()
        skipped = dataset.pop("skipped")
        return store.create(model, params.model_dump(), promote, skipped, dataset, job_id=job_id)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
