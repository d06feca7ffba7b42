"""One fine-tuning job, run in its own process: ``python -m app run-job JOB_ID``.

The process trains with TensorFlow's thread pools capped and at a lower CPU priority, so
the service keeps answering predictions. It writes progress and the result into the job
store; the service's supervisor promotes the new version and marks the job finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.config import Settings, cores_available
from app.errors import ConvserveError, disk_error, writing_to
from app.jobs.store import CANCELLED, CANCELLING, FAILED, JobStore
from app.storage.sql import settings_database
from app.training import interrupt

if TYPE_CHECKING:
    from app.training.trainer import StoredDataset

log = logging.getLogger("convserve.job")


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "jobs" / job_id


def remove_job_files(settings: Settings, job_id: str) -> None:
    """Remove a finished job's dataset and workspace (unless the settings keep them), here
    and in the job files bucket."""
    if not settings.keep_job_files:
        shutil.rmtree(job_dir(settings, job_id), ignore_errors=True)
        from app.jobs.files import job_files_for

        files = job_files_for(settings)
        if files is not None:
            files.remove(job_id)


def store_for(settings: Settings) -> JobStore:
    """The job store, in the database the settings name."""
    return JobStore(settings_database(settings))


class _HeldJobStore(JobStore):
    """The job store as a job process uses it: a SIGTERM's stop waits for each read and
    write to end (`interrupt.held`). Raised inside the database driver, the stop was caught
    and logged there as a failure to close a connection before it went on up."""

    def get(self, job_id: str) -> dict[str, Any] | None:
        with interrupt.held():
            return super().get(job_id)

    def update(self, job_id: str, **fields: Any) -> None:
        with interrupt.held():
            super().update(job_id, **fields)


def study_command(settings: Settings, name: str, version: int) -> list[str] | None:
    """The command that runs a new version's precision study after its job, or None when
    studies are off. It ends by writing the study into the version's metadata, which the
    serving processes follow (`ModelManager.refresh`)."""
    if not settings.precision_study:
        return None
    return [sys.executable, "-m", "app", "study", "--model", f"{name}:{version}", "--after-job"]


def find_version_by_source(registry: Any, name: str, source: str) -> int | None:
    """A version an earlier attempt of the job already wrote (crash after the write)."""
    for version in registry.versions(name):
        if registry.metadata(name, version).get("source") == source:
            return int(version)
    return None


def limit_threads(setting: int | Literal["auto"], nice: int) -> None:
    """TensorFlow's threads for a job process (``job_threads``), and a lower CPU priority
    (``job_nice``): with a job using every core, predictions still get them first
    (measured in the README's "Predictions while a job trains")."""
    threads = cores_available() if setting == "auto" else setting
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    with contextlib.suppress(OSError):
        os.nice(nice)


class _Progress:
    """Writes phase, epoch, fraction done, ETA and history into the store."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        total: int,
        workspace: Path,
        owner: str | None = None,
    ) -> None:
        self.store, self.job_id, self.total = store, job_id, total
        self.owner = owner
        self.files: Any = None  # app.jobs.files.JobFiles, when job files live in S3
        self.workspace = workspace
        self.started = time.monotonic()
        self.first_epoch: int | None = None
        self.phase = "head"
        self._last_check = 0.0
        self._last_batch_write = 0.0
        self._cancelling = False

    def on_phase(self, phase: str, first: int, total: int) -> None:
        self.phase = phase
        self.total = total  # a phase that stopped early shortens the most there can be
        if self.first_epoch is None:
            self.first_epoch = first
        self._write(first, None)

    def on_epoch(self, report: Any) -> None:
        from app.training.trainer import read_history  # kept in the workspace: survives restarts

        if self.files is not None:
            # The resume state first: once the store says the epoch is done, a worker that
            # takes the job over finds that epoch's checkpoint.
            try:
                self.files.save_workspace(self.job_id, self.workspace)
            except Exception:  # not fatal: a resume elsewhere starts from an older epoch
                log.exception("job %s: could not upload its resume state", self.job_id)
        history = read_history(self.workspace / "history.json")
        self.store.update(self.job_id, history=sorted(history, key=lambda h: h["epoch"]))
        self._write(report.epoch, report)

    def _write(self, done: int, report: Any, within: float = 0.0) -> None:
        """``done`` whole epochs finished, plus ``within`` of the next one."""
        eta = None
        ran = done + within - (self.first_epoch or 0)
        if ran > 0:
            left = self.total - done - within
            eta = round((time.monotonic() - self.started) / ran * left, 1)
        progress = {
            "phase": self.phase,
            "epoch": done,
            "total_epochs": self.total,
            "fraction": round((done + within) / self.total, 4) if self.total else 1.0,
            "eta_seconds": eta,
        }
        self.store.update(self.job_id, progress=progress)

    def on_batch(self, epoch: int, batch: int, steps: int) -> None:
        """Fraction done within an epoch, written at most every 2 seconds."""
        now = time.monotonic()
        if steps <= 0 or now - self._last_batch_write < 2.0:
            return
        self._last_batch_write = now
        self._write(epoch, None, within=batch / steps)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._cancelling and now - self._last_check > 0.5:
            self._last_check = now
            job = self.store.get(self.job_id) or {}
            if self.owner and job.get("owner") not in (None, self.owner):
                # The lease went to another worker (this one's was cut off for longer than
                # the lease): stop at once and leave the job and its files to the new owner.
                log.warning("job %s: now run by %s; stopping here", self.job_id, job["owner"])
                raise JobStopped
            self._cancelling = job.get("status") == CANCELLING
        return self._cancelling


class JobStopped(BaseException):
    """SIGTERM from the service shutting down (a BaseException: nothing catches it on the
    way up, while every ``finally`` and the registry's cleanup still run)."""


EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped, to be continued


_stop_requested = False


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    global _stop_requested
    _stop_requested = True
    # Raised here, or once the epoch's checkpoint files are all written.
    interrupt.request_stop(JobStopped())


def _finishing() -> None:
    """The job's outcome is decided: a SIGTERM now must not cut its files' removal and its
    final status in half."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_job(job_id: str, settings: Settings, owner: str | None = None) -> int:
    """Run the job; ``owner`` is the supervisor or worker holding its lease (the job stops
    if another one takes it over)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s job %(message)s")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Ctrl-C in a terminal reaches the whole process group: the service decides, and sends
    # SIGTERM when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    store = _HeldJobStore(settings_database(settings))
    job = store.get(job_id)
    if job is None:
        log.error("no job %s", job_id)
        return 2
    limit_threads(settings.job_threads, settings.job_nice)

    from app.jobs.files import job_files_for
    from app.storage.factory import open_registry
    from app.training.params import TrainParams
    from app.training.trainer import Hooks, TrainingCancelled, train

    registry = open_registry(settings)
    folder = job_dir(settings, job_id)
    name = job["model"]
    try:
        version = find_version_by_source(registry, name, job_id)
        if version is None:
            params = TrainParams(**job["params"])
            progress = _Progress(store, job_id, params.total_epochs, folder / "workspace", owner)
            stored: StoredDataset | None = None
            if (job.get("dataset") or {}).get("name"):  # a stored dataset version
                stored = _lay_out_stored_dataset(settings, registry, job["dataset"], folder)
            files = job_files_for(settings)
            if files is not None:
                files.fetch(job_id, folder)  # the dataset, and an earlier attempt's state
                progress.files = files
            hooks = Hooks(
                log=lambda line: log.info("%s: %s", job_id, line),
                on_epoch=progress.on_epoch,
                on_phase=progress.on_phase,
                on_batch=progress.on_batch,
                should_stop=progress.should_stop,
            )
            if not settings.label_health:
                params = params.model_copy(update={"label_health": False})
            result = train(
                folder / "dataset",
                name,
                params,
                registry,
                folder / "workspace",
                weights=settings.pretrained,
                source=job_id,
                hooks=hooks,
                # The precision study runs after the job (`study_command`): the new
                # version serves at f32 as soon as it is written, and the training keeps
                # its whole time budget.
                study=False,
                stored=stored,
            )
            version = result.version
            skipped = job["skipped"] + result.dataset["skipped"]
            store.update(job_id, skipped=_unique(skipped))
        meta = registry.metadata(name, version)
        store.update(
            job_id,
            result={
                "model": name,
                "version": version,
                "metrics": meta["metrics"],
                # What training chose (fine-tuning depth, class weights) and why each
                # phase stopped.
                "training": meta.get("training"),
            },
            history=meta["history"],
        )
        return 0
    except TrainingCancelled:
        _finishing()
        # Files first: once the job reads "cancelled", nothing of it is left.
        remove_job_files(settings, job_id)
        store.finish(job_id, CANCELLED)
        return 0
    except JobStopped:
        # The service is shutting down: leave the job running in the store (the service
        # queues it again) and its workspace in place, so it resumes from its last epoch.
        log.info("job %s stopped by the service; it resumes at the next start", job_id)
        return EXIT_STOPPED
    except Exception as exc:
        _finishing()
        if _stop_requested:
            # The stop landed inside a library that turned it into an error of its own:
            # the job was interrupted, not broken. Stopped as above; an error that was real
            # comes back at the next attempt.
            log.info(
                "job %s stopped by the service (%s); it resumes at the next start", job_id, exc
            )
            return EXIT_STOPPED
        return _fail(job_id, exc, settings, store)


def _lay_out_stored_dataset(
    settings: Settings, registry: Any, dataset: dict[str, Any], folder: Path
) -> StoredDataset:
    """Write the job's stored dataset version into its folder as class folders (once: a
    resumed job finds it there), from the dataset store every host shares."""
    from app.storage.factory import open_datasets
    from app.training import trainer

    store = open_datasets(settings, registry)
    name, version = dataset["name"], int(dataset["version"])
    target = folder / "dataset"
    if target.is_dir():
        return trainer.StoredDataset(name, version, store.file_ids(name, version))
    staging = folder / f".dataset-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with writing_to("the service's data folder"):
        staging.mkdir(parents=True)
        ids = store.materialize(name, version, staging)
        os.rename(staging, target)
    return trainer.StoredDataset(name, version, ids)


def _fail(job_id: str, exc: Exception, settings: Settings, store: JobStore) -> int:
    """Record why the job failed (a stable code, and the reason) and remove its files."""
    remove_job_files(settings, job_id)
    if isinstance(exc, ConvserveError):  # the dataset's, or the registry's (disk full ...)
        store.finish(job_id, FAILED, error=exc.message, error_code=exc.code)
        return 0
    disk = disk_error(exc, "the service's data folder")
    if disk is not None:  # a full or read-only disk: the reason, not a stack trace
        log.error("job %s failed: %s", job_id, disk.message)
        store.finish(job_id, FAILED, error=disk.message, error_code=disk.code)
        return 0
    log.exception("job %s failed", job_id, exc_info=exc)
    store.finish(
        job_id, FAILED, error=f"training failed: {exc}"[:500], error_code="training_failed"
    )
    return 1


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for item in items:
        if item["path"] not in seen:
            seen.add(item["path"])
            out.append(item)
    return out
