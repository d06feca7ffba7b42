"""``/finetune``: upload a dataset, follow the job, cancel it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, Union, get_args

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError

from app.api.deps import (
    Caller,
    Datasets,
    Jobs,
    Manager,
    Read,
    Registry,
    SettingsDep,
    Supervisor,
    Train,
    TrainJob,
    charge_stored,
    check_model,
)
from app.errors import ConvserveError
from app.jobs.intake import queue_job
from app.jobs.store import CANCELLED, DONE, PROGRESS, JobEvent
from app.names import NAME_PATTERN, NAME_REGEX
from app.nets.catalog import ARCHITECTURES
from app.schemas import ErrorBody, Job, JobCreated, JobList
from app.storage.datasets import DATASET_NAME_RULE
from app.storage.registry import MODEL_NAME_RULE
from app.training.params import TrainParams

router = APIRouter(prefix="/finetune", tags=["finetune"])


def _train_form_parameters() -> list[inspect.Parameter]:
    """The training parameters as optional form fields, read from `TrainParams` (so the
    OpenAPI document shows each one's type, range, words and description)."""
    fields = []
    for name, field in TrainParams.model_fields.items():
        # A form field is given or left out: its type is the value's (never null).
        members = [m for m in get_args(field.annotation) if m is not type(None)]
        annotation: Any = field.annotation
        if type(None) in get_args(field.annotation):
            annotation = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
        # The range (ge, gt, le) goes on the form field, where FastAPI documents it.
        bounds = {
            key: getattr(rule, key)
            for rule in field.metadata
            for key in ("ge", "gt", "le", "lt")
            if hasattr(rule, key)
        }
        default = Form(None, description=field.description, **bounds)
        fields.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
    return fields


def train_form(**fields: Any) -> dict[str, Any]:
    """The training parameters a form gave (the others are left to `TrainParams`)."""
    return {k: v for k, v in fields.items() if v is not None}


train_form.__signature__ = inspect.Signature(_train_form_parameters())  # type: ignore[attr-defined]


def _params(given: dict[str, Any], default_base: str) -> TrainParams:
    given = dict(given)
    given.setdefault("base", default_base)
    try:
        return TrainParams(**given)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("form", *e["loc"])} for e in exc.errors()]
        ) from None


def _check_source(
    upload: UploadFile | None, dataset_name: str | None, dataset_version: int | None
) -> None:
    """A job trains on an upload, a stored dataset, or an upload stored as one."""
    problem = None
    if dataset_name is None and dataset_version is not None:
        problem = ("dataset_version", "dataset_version needs dataset_name")
    elif upload is None and dataset_name is None:
        problem = (
            "dataset",
            "send the images: a multipart file field 'dataset' (a .zip, .tar or .tar.gz"
            " with one folder per class), or a form field 'dataset_name' naming a stored"
            " dataset",
        )
    elif upload is not None and dataset_version is not None:
        problem = (
            "dataset_version",
            "an uploaded archive becomes the dataset's next version: leave dataset_version out",
        )
    elif dataset_name is not None and not NAME_PATTERN.match(dataset_name):
        problem = ("dataset_name", DATASET_NAME_RULE)
    if problem is not None:
        raise RequestValidationError(
            [{"loc": ("form", problem[0]), "type": "value_error", "msg": problem[1]}]
        )


@router.post(
    "",
    status_code=202,
    response_model=JobCreated,
    # The images: an upload (with no dataset_version: it becomes the next version), or a
    # stored dataset (dataset_name, and dataset_version if not the latest).
    openapi_extra={
        "x-body-rules": {
            "anyOf": [
                {"required": ["dataset"], "not": {"required": ["dataset_version"]}},
                {"required": ["dataset_name"], "not": {"required": ["dataset"]}},
            ]
        }
    },
    responses={
        404: {"model": ErrorBody, "description": "no such stored dataset, or version of it"},
        202: {
            "headers": {
                "Location": {
                    "description": "the job: /finetune/{job_id}",
                    "schema": {"type": "string"},
                }
            }
        },
    },
)
async def create_job(
    request: Request,
    response: Response,
    caller: Annotated[Caller, TrainJob],
    settings: SettingsDep,
    jobs: Jobs,
    manager: Manager,
    registry: Registry,
    supervisor: Supervisor,
    datasets: Datasets,
    # Each form field is given or left out, so the document types it as its value (never
    # null); left out, it is None here.
    dataset: UploadFile = File(
        None,
        description=".zip, .tar or .tar.gz, one folder per class; or none, with dataset_name",
    ),
    dataset_name: str = Form(
        None,
        pattern=NAME_REGEX,
        description="train on this stored dataset; with an archive, the archive is stored"
        " first as its next version (version 1 of a new dataset)",
    ),
    dataset_version: int = Form(
        None, ge=1, description="the stored dataset's version; default the latest"
    ),
    model: str = Form(
        None,
        pattern=NAME_REGEX,
        description="the model (default the default model); a new name creates it",
    ),
    given: dict[str, Any] = Depends(train_form),
    promote: Literal["true", "false", "canary", "shadow"] = Form(
        "true",
        description="true: serve the new version; false: keep it back; canary or shadow:"
        " start a rollout of it (rollout_share of the traffic)",
    ),
    rollout_share: float = Form(
        None, gt=0, le=1, description="with promote=canary or shadow; default 0.1"
    ),
) -> JobCreated:
    """Queue a fine-tuning job on an uploaded archive (checked before the job is queued)
    or on a stored dataset version. A ``model`` that does not exist yet is created by the
    job."""
    _check_source(dataset, dataset_name, dataset_version)
    name = model or settings.default_model
    if not NAME_PATTERN.match(name):
        raise RequestValidationError(
            [{"loc": ("form", "model"), "type": "value_error", "msg": MODEL_NAME_RULE}]
        )
    check_model(caller, name)
    # A name that is not served yet creates that model with the job's first version.
    state = manager.models.get(name)
    active = state.active if state is not None else None
    architecture = active.metadata.get("base") if active else None
    params = _params(given, architecture if architecture in ARCHITECTURES else "mobilenet_v2")
    rollout = None
    if promote in ("canary", "shadow"):
        rollout = {"mode": promote, "share": rollout_share or 0.1}
    elif rollout_share is not None:
        raise RequestValidationError(
            [
                {
                    "loc": ("form", "rollout_share"),
                    "type": "value_error",
                    "msg": "rollout_share goes with promote=canary or promote=shadow",
                }
            ]
        )
    row = await asyncio.to_thread(
        queue_job,
        settings,
        jobs,
        dataset.file if dataset is not None else None,
        name,
        params,
        promote == "true",
        datasets,
        dataset_name,
        dataset_version,
        rollout,
    )
    if dataset is not None and dataset_name:  # the archive is kept as a dataset version
        await asyncio.to_thread(charge_stored, request, dataset_name)
    await supervisor.submit(row["id"])
    response.headers["Location"] = f"/finetune/{row['id']}"
    return JobCreated(job_id=row["id"], status=row["status"])


@router.get("", response_model=JobList)
def list_jobs(
    caller: Annotated[Caller, Read], jobs: Jobs, limit: int = Query(100, ge=1, le=1000)
) -> JobList:
    """Jobs, newest first (of the models a key is limited to)."""
    rows = jobs.recent(limit)
    if caller.models is not None:
        rows = [r for r in rows if r["model"] in caller.models]
    return JobList(jobs=[Job.from_row(r) for r in rows])


def job_row(jobs: Any, job_id: str, caller: Caller | None = None) -> dict[str, Any]:
    """The job, or 404; 403 for a key limited to other models than the job's."""
    row = jobs.get(job_id)
    if row is None:
        raise ConvserveError("job_not_found", f"no fine-tuning job {job_id!r}", 404)
    if caller is not None:
        check_model(caller, row["model"])
    return dict(row)


@router.get("/{job_id}", response_model=Job)
def get_job(caller: Annotated[Caller, Read], job_id: str, jobs: Jobs) -> Job:
    return Job.from_row(job_row(jobs, job_id, caller))


@router.delete("/{job_id}", response_model=Job)
def cancel_job(
    caller: Annotated[Caller, Train], job_id: str, jobs: Jobs, supervisor: Supervisor
) -> Job:
    """Cancel: a queued job at once, a running one at its next batch."""
    row = job_row(jobs, job_id, caller)
    new = jobs.request_cancel(job_id)
    if new is None:
        raise ConvserveError("job_finished", f"job {job_id} already ended ({row['status']})", 409)
    if new == CANCELLED:
        supervisor.cleanup(job_id)
    return Job.from_row(job_row(jobs, job_id))


# How often a stream looks for new events: a new epoch reaches a client within this.
EVENTS_POLL_SECONDS = 0.5


async def _existing_job(caller: Annotated[Caller, Read], job_id: str, jobs: Jobs) -> str:
    await asyncio.to_thread(job_row, jobs, job_id, caller)
    return job_id


def _latest_progress_only(events: list[JobEvent]) -> list[JobEvent]:
    """Drop ``progress`` events that a later one in the same batch supersedes (a client
    catching up needs only where the job is now)."""
    last = max((e.seq for e in events if e.type == PROGRESS), default=None)
    return [e for e in events if e.type != PROGRESS or e.seq == last]


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"description": "text/event-stream of status, progress, epoch and done events"},
        404: {"description": "no such job", "model": ErrorBody},
    },
)
async def job_events(
    request: Request,
    job_id: Annotated[str, Depends(_existing_job)],
    jobs: Jobs,
    last_event_id: str | None = Header(
        None, description="resume after this event id (EventSource sends it on reconnect)"
    ),
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events for one job: ``status``, ``progress``, ``epoch`` and a final
    ``done``, each with an id; the stream ends after ``done``, or early when the service
    shuts down (reconnect with ``Last-Event-ID``). Works the same for a queued, running or
    finished job. FastAPI sends keep-alive comments while it is quiet."""
    after = (
        int(last_event_id)
        if last_event_id and (last_event_id.isascii() and last_event_id.isdigit())
        else 0
    )
    drain = request.app.state.drain
    while not drain.draining:
        events = await asyncio.to_thread(jobs.events, job_id, after)
        for event in _latest_progress_only(events):
            yield ServerSentEvent(id=str(event.seq), event=event.type, data=event.data)
            if event.type == DONE:
                return
        if events:
            after = events[-1].seq
        await asyncio.sleep(EVENTS_POLL_SECONDS)
