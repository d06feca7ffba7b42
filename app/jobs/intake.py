"""Accepting an upload: store it, check it, and queue the job, or refuse with a reason."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from app.config import Settings
from app.data.archives import ArchiveLimits, extract_archive
from app.data.datasets import (
    DatasetSummary,
    check_counts,
    image_problem,
    scan_dataset,
    usable_files,
)
from app.errors import ConvserveError, writing_to
from app.jobs.files import job_files_for
from app.jobs.runner import job_dir
from app.jobs.store import QUEUED, JobStore, new_job_id
from app.storage.datasets import (
    DatasetStore,
    DatasetStoreError,
    NewImage,
    check_label,
    check_name,
    per_class,
)
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
    upload: IO[bytes] | None,
    model: str,
    params: TrainParams,
    promote: bool,
    datasets: DatasetStore | None = None,
    dataset_name: str | None = None,
    dataset_version: int | None = None,
    rollout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Queue a job for an upload (stored, extracted and checked here) or for a stored
    dataset version (``dataset_name``; an upload sent with it is first stored as that
    dataset's next version). Blocking: call it from a thread. Nothing of a refused
    upload stays on disk."""
    if store.count(QUEUED) >= settings.max_queued_jobs:
        raise ConvserveError(
            "queue_full",
            f"{settings.max_queued_jobs} jobs are already queued; retry later",
            503,
            {"Retry-After": "60"},
        )
    job_id = new_job_id()
    if dataset_name is not None:
        assert datasets is not None
        skipped: list[dict[str, Any]] = []
        if upload is not None:
            change = add_archive_to_dataset(settings, datasets, dataset_name, upload)
            dataset_version, skipped = change["version"], change["skipped"]
        dataset = stored_dataset_summary(
            settings, datasets, dataset_name, dataset_version, params.validation_split
        )
        # The job reads the images from the dataset store, on whichever host runs it.
        return store.create(
            model, params.model_dump(), promote, skipped, dataset, job_id=job_id, rollout=rollout
        )
    assert upload is not None
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
        summary_dict = summary.to_dict()
        skipped = summary_dict.pop("skipped")
        return store.create(
            model,
            params.model_dump(),
            promote,
            skipped,
            summary_dict,
            job_id=job_id,
            rollout=rollout,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


# -- stored datasets ------------------------------------------------------------------------


def add_archive_to_dataset(
    settings: Settings,
    datasets: DatasetStore,
    name: str,
    upload: IO[bytes],
    exists_ok: bool = True,
) -> dict[str, Any]:
    """Extract an uploaded archive (checked as for a job) and store its usable images as
    ``name``'s next version (version 1 of a new dataset). Blocking. Returns the change
    with the files skipped and why."""
    check_name(name)
    if not exists_ok and datasets.versions(name):
        raise DatasetStoreError("dataset_exists", f"a dataset named {name!r} exists already", 409)
    folder = settings.data_dir / "uploads" / new_job_id()
    try:
        with writing_to("the service's data folder"):
            folder.mkdir(parents=True)
            archive = folder / "upload"
            save_upload(upload, archive, settings.max_upload_bytes)
            limits = ArchiveLimits(settings.max_archive_files, settings.max_archive_bytes)
            extract_archive(archive, folder / "dataset", limits)
            archive.unlink()
        found, skipped = usable_files(folder / "dataset", settings.max_image_pixels)
        images = [NewImage(label, path.name, "upload", path=path) for label, path in found]
        if not exists_ok:
            change = datasets.create(name, images)
        else:
            change = datasets.add(name, images, create=True)
        return {**change.to_dict(), "skipped": [asdict(s) for s in skipped]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def add_files_to_dataset(
    settings: Settings,
    datasets: DatasetStore,
    name: str,
    label: str,
    files: Sequence[tuple[str, IO[bytes]]],
    source: str = "api",
) -> dict[str, Any]:
    """Add uploaded image files (file name, stream) to class ``label``: the same checks as
    an archive's images; what is not a usable image is skipped and reported."""
    check_label(label)
    images, skipped = [], []
    for filename, stream in files:
        data = stream.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            reason: str | None = f"larger than {settings.max_image_bytes} bytes"
        else:
            reason = image_problem(data, settings.max_image_pixels)
        if reason is None:
            images.append(NewImage(label, filename or "image", source, data=data))
        else:
            skipped.append({"path": filename, "reason": reason})
    if not images:
        raise ConvserveError(
            "no_usable_images",
            "none of the files is a usable image: "
            + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5]),
            400,
        )
    change = datasets.add(name, images)
    return {**change.to_dict(), "skipped": skipped}


def stored_dataset_summary(
    settings: Settings,
    datasets: DatasetStore,
    name: str,
    version: int | None,
    validation_split: float,
) -> dict[str, Any]:
    """The check of a stored dataset version, and what a job records of the version it
    will train on: the counts rules a job's upload gets (classes, images per class)."""
    manifest = datasets.manifest(name, version)
    counts = per_class(manifest)
    check_counts(counts, validation_split, settings.min_images_per_class)
    summary = DatasetSummary(sorted(counts), counts).to_dict()
    summary.pop("skipped")
    return {**summary, "name": name, "version": manifest["version"]}
