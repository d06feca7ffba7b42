"""A job's files in S3-compatible storage, so that any worker on any host can run it.

With ``CONVSERVE_JOB_FILES_URL`` (``s3://bucket/prefix``) set, the job's files do not have
to be on a folder every host mounts:

- the API process that took the upload packs the checked dataset into one object,
  ``<prefix>/<job>/dataset.tar``, and removes its local copy;
- the worker that runs the job unpacks it into its own data folder, and after every
  completed epoch uploads the job's resume state (``workspace.tar``: the last epoch's
  checkpoint, the best weights, the history and the finished phases; not the prepared
  images, which a resumed job prepares again from the dataset, identically);
- a worker that takes over a job whose worker died unpacks both and resumes from the last
  completed epoch;
- the objects go when the job ends.

Without the setting, a job's files live only in the data folder (``CONVSERVE_DATA_DIR``):
on one machine, or on a folder every host mounts.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any

from app.config import Settings
from app.storage.s3 import MISSING, error_code, parse_s3_url

log = logging.getLogger("convserve.jobs")

DATASET_OBJECT = "dataset.tar"
WORKSPACE_OBJECT = "workspace.tar"
# Left out of the resume state: prepared again from the dataset on resume.
NOT_SAVED = ("images",)


class JobFiles:
    def __init__(self, url: str, client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.s3 = client

    def _key(self, job_id: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, job_id, name) if p)

    def _put_tar(self, job_id: str, name: str, folder: Path, skip: tuple[str, ...] = ()) -> None:
        with tempfile.TemporaryDirectory(prefix="convserve-") as tmp:
            packed = Path(tmp) / name
            with tarfile.open(packed, "w") as tar:
                for entry in sorted(folder.iterdir()):
                    if entry.name not in skip:
                        tar.add(entry, arcname=entry.name)
            self.s3.upload_file(str(packed), self.bucket, self._key(job_id, name))

    def _get_tar(self, job_id: str, name: str, folder: Path) -> bool:
        """Unpack the object into ``folder`` (replaced whole); False when there is none."""
        with tempfile.TemporaryDirectory(prefix="convserve-") as tmp:
            packed = Path(tmp) / name
            try:
                self.s3.download_file(self.bucket, self._key(job_id, name), str(packed))
            except Exception as exc:
                if error_code(exc) in MISSING:
                    return False
                raise
            staging = folder.with_name(f".{folder.name}-{uuid.uuid4().hex}")
            try:
                with tarfile.open(packed) as tar:
                    tar.extractall(staging, filter="data")  # no links out, no devices
                shutil.rmtree(folder, ignore_errors=True)
                staging.rename(folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return True

    # -- the API process ------------------------------------------------------------------

    def put_dataset(self, job_id: str, job_folder: Path) -> None:
        """Upload the checked dataset; the local copy is no longer needed."""
        self._put_tar(job_id, DATASET_OBJECT, job_folder / "dataset")
        shutil.rmtree(job_folder / "dataset", ignore_errors=True)

    # -- the worker -----------------------------------------------------------------------

    def fetch(self, job_id: str, job_folder: Path) -> None:
        """Bring the dataset, and the resume state of an earlier attempt if there is one,
        into this host's data folder (what is already here is kept)."""
        job_folder.mkdir(parents=True, exist_ok=True)
        if not (job_folder / "dataset").is_dir() and not self._get_tar(
            job_id, DATASET_OBJECT, job_folder / "dataset"
        ):
            raise FileNotFoundError(f"job {job_id} has no dataset in the job files bucket")
        if not (job_folder / "workspace").is_dir() and self._get_tar(
            job_id, WORKSPACE_OBJECT, job_folder / "workspace"
        ):
            log.info("job %s: resume state fetched from the job files bucket", job_id)

    def save_workspace(self, job_id: str, workspace: Path) -> None:
        """Upload the resume state (after an epoch)."""
        if workspace.is_dir():
            self._put_tar(job_id, WORKSPACE_OBJECT, workspace, skip=NOT_SAVED)

    def remove(self, job_id: str) -> None:
        for name in (DATASET_OBJECT, WORKSPACE_OBJECT):
            with contextlib.suppress(Exception):
                self.s3.delete_object(Bucket=self.bucket, Key=self._key(job_id, name))


def job_files_for(settings: Settings) -> JobFiles | None:
    return JobFiles(settings.job_files_url) if settings.job_files_url else None
