"""``/finetune``: upload a dataset, follow the job, cancel it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.api.deps import Admin, Jobs, Manager, Registry, SettingsDep, Supervisor
from app.errors import ConvserveError
from app.jobs.intake import queue_job
from app.jobs.store import CANCELLED
from app.nets.transfer import BASES
from app.schemas import Job, JobCreated, JobList
from app.training.params import TrainParams

router = APIRouter(prefix="/finetune", tags=["finetune"])


def _params(fields: dict[str, Any], default_base: str) -> TrainParams:
    given = {k: v for k, v in fields.items() if v is not None}
    given.setdefault("base", default_base)
    try:
        return TrainParams(**given)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("form", *e["loc"])} for e in exc.errors()]
        ) from None


@router.post("", status_code=202, response_model=JobCreated, dependencies=[Admin])
async def create_job(
    response: Response,
    settings: SettingsDep,
    jobs: Jobs,
    manager: Manager,
    registry: Registry,
    supervisor: Supervisor,
    dataset: UploadFile = File(..., description=".zip, .tar or .tar.gz, one folder per class"),
    model: str | None = Form(None),
    base: str | None = Form(None),
    epochs: int | None = Form(None),
    fine_tune_epochs: int | None = Form(None),
    fine_tune_at: int | None = Form(None),
    image_size: int | None = Form(None),
    batch_size: int | None = Form(None),
    learning_rate: float | None = Form(None),
    fine_tune_learning_rate: float | None = Form(None),
    validation_split: float | None = Form(None),
    augment: bool | None = Form(None),
    seed: int | None = Form(None),
    promote: bool = Form(True),
) -> JobCreated:
    """Queue a fine-tuning job; the archive is checked before the job is queued."""
    name = model or settings.default_model
    if name not in manager.models:
        raise RequestValidationError(
            [
                {
                    "loc": ("form", "model"),
                    "type": "value_error",
                    "msg": f"unknown model {name!r}; served models: {', '.join(manager.models)}",
                }
            ]
        )
    active = manager.models[name].active
    architecture = active.metadata.get("base") if active else None
    params = _params(
        dict(
            base=base,
            epochs=epochs,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_at=fine_tune_at,
            image_size=image_size,
            batch_size=batch_size,
            learning_rate=learning_rate,
            fine_tune_learning_rate=fine_tune_learning_rate,
            validation_split=validation_split,
            augment=augment,
            seed=seed,
        ),
        architecture if architecture in BASES else "mobilenet_v2",
    )
    row = await asyncio.to_thread(queue_job, settings, jobs, dataset.file, name, params, promote)
    supervisor.wake()
    response.headers["Location"] = f"/finetune/{row['id']}"
    return JobCreated(job_id=row["id"], status=row["status"])


@router.get("", response_model=JobList)
def list_jobs(jobs: Jobs, limit: int = Query(100, ge=1, le=1000)) -> JobList:
    """Jobs, newest first."""
    return JobList(jobs=[Job.from_row(r) for r in jobs.recent(limit)])


def _get(jobs: Any, job_id: str) -> dict[str, Any]:
    row = jobs.get(job_id)
    if row is None:
        raise ConvserveError("job_not_found", f"no fine-tuning job {job_id!r}", 404)
    return dict(row)


@router.get("/{job_id}", response_model=Job)
def get_job(job_id: str, jobs: Jobs) -> Job:
    return Job.from_row(_get(jobs, job_id))


@router.delete("/{job_id}", response_model=Job, dependencies=[Admin])
def cancel_job(job_id: str, jobs: Jobs, supervisor: Supervisor) -> Job:
    """Cancel: a queued job at once, a running one at its next batch."""
    row = _get(jobs, job_id)
    new = jobs.request_cancel(job_id)
    if new is None:
        raise ConvserveError("job_finished", f"job {job_id} already ended ({row['status']})", 409)
    if new == CANCELLED:
        supervisor.cleanup(job_id)
    return Job.from_row(_get(jobs, job_id))
