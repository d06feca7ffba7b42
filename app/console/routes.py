"""The console's pages. Each renders what the service knows now; the page's script then
calls the JSON API (predict, promote, train, follow a job) like any other client.

Actions carry the API key as an ``Authorization`` header that the page's script adds. Once
keys are on, a page and its images load with the read cookie of ``POST /session``, which the
service accepts for GET and HEAD only, so another site's page cannot act with a visitor's
rights; a page read without it answers with a page that asks for the key.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app import __version__
from app.api.datasets import dataset_info
from app.api.deps import (
    Caller,
    Captures,
    Datasets,
    Jobs,
    Manager,
    PredictRead,
    Read,
    ReadPhotos,
    Registry,
    SettingsDep,
)
from app.api.finetune import job_row, list_jobs
from app.api.label_health import trained_on
from app.api.models import list_models, model_detail, model_info
from app.api.review import get_capture, target_dataset
from app.data.datasets import FEW_IMAGES_WARNING
from app.errors import ConvserveError
from app.names import NAME_PATTERN
from app.nets.catalog import ARCHITECTURES
from app.schemas import Job
from app.storage.captures import ORDERS
from app.storage.datasets import not_found
from app.training.params import TrainParams

HERE = Path(__file__).parent
STATIC_URL = "/console/static"
templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes
# A version's source is a job id when a fine-tuning job wrote it (else "cli", "bootstrap").
templates.env.tests["job_id"] = lambda value: bool(re.fullmatch(r"[0-9a-f]{16}", value or ""))


def describe_change(change: dict[str, Any]) -> str:
    """A dataset version's change, in words."""
    action = change.get("action")
    if action == "create":
        return f"created with {change.get('added', 0)} images"
    if action == "add":
        labels = ", ".join(change.get("labels", []))
        dup = change.get("duplicates", 0)
        return f"added {change.get('added', 0)} images to {labels}" + (
            f" ({dup} already there)" if dup else ""
        )
    if action == "relabel":
        return f"relabelled an image: {change.get('from')} → {change.get('to')}"
    if action == "remove":
        return f"removed an image from {change.get('label')}"
    if action == "add_class":
        return f"added the class {change.get('label')}"
    return str(action or "")


templates.env.globals["describe"] = describe_change
DATASET_PAGE_SIZE = 24

# Pages load only their own files: no inline script, nothing from another origin. Styles
# set from script (chart sizes, heat-map colours) go through the CSSOM, which this allows.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

# The pages are in the OpenAPI document (tag "console"), so the fuzz tests reach them too.
router = APIRouter(tags=["console"])


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def _page(
    request: Request, template: str, title: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    settings = request.app.state.settings
    keys_on = settings.api_key is not None or request.state.auth.keys_exist()
    return templates.TemplateResponse(
        request,
        template,
        {
            "title": title,
            "auth_required": keys_on,
            "public_reads": settings.public_reads,
            "version": __version__,
            "static": STATIC_URL,
            **context,
        },
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )


def _not_found(request: Request, exc: ConvserveError) -> HTMLResponse:
    return _page(request, "error.html", "Not found", status_code=exc.status, error=exc)


def is_page(path: str) -> bool:
    return path == "/" or (path.startswith("/console/") and not path.startswith(STATIC_URL + "/"))


def page_errors(
    api_handler: Callable[[Request, Exception], Awaitable[Response]],
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The handler of `ConvserveError`: a page whose read was refused (no key, or a key
    without the scope) answers with a page that asks for a key; the rest as the API does."""

    async def handler(request: Request, exc: Exception) -> Response:
        if (
            isinstance(exc, ConvserveError)
            and exc.status in (401, 403)
            and is_page(request.url.path)
        ):
            page = _page(
                request,
                "locked.html",
                "A key is needed",
                status_code=exc.status,
                error=exc,
                locked=True,
            )
            page.headers.update(exc.headers or {})
            return page
        return await api_handler(request, exc)

    return handler


def _options(spec: dict[str, Any]) -> list[Any]:
    """The fixed values a field (or a member of its union) takes: enum and const."""
    members = spec.get("anyOf", [spec])
    return [v for m in members for v in m.get("enum", [m["const"]] if "const" in m else [])]


def train_fields() -> list[dict[str, Any]]:
    """The form fields of `TrainParams`, with their defaults and limits.

    ``kind``: ``boolean`` (a checkbox), ``choice`` (a list of words), ``text`` (a number or
    a word, such as ``fine_tune_at``: a layer or ``auto``), else ``integer`` or ``number``.
    """
    schema = TrainParams.model_json_schema()
    fields = []
    for name, spec in schema["properties"].items():
        if name == "base":
            continue  # chosen with the model (a new version keeps its model's base)
        kind = spec.get("type") or next(
            (s["type"] for s in spec.get("anyOf", []) if s.get("type") != "null"), "string"
        )
        options = _options(spec)
        if options:
            kind = "choice" if kind == "string" and "anyOf" not in spec else "text"
        bounds = next((s for s in spec.get("anyOf", []) if s.get("type") == kind), spec)
        fields.append(
            {
                "name": name,
                "label": name.replace("_", " "),
                "kind": kind,
                "options": options,
                # The input size depends on the network: left to the service unless given.
                "default": None if name == "image_size" else spec.get("default"),
                "min": bounds.get("minimum", bounds.get("exclusiveMinimum")),
                "above": "exclusiveMinimum" in bounds,  # the minimum itself is refused
                "max": bounds.get("maximum", bounds.get("exclusiveMaximum")),
                "step": "any" if kind == "number" else 1,
                "help": spec.get("description", ""),
            }
        )
    return fields


@router.get("/", response_class=HTMLResponse, dependencies=[PredictRead])
def predict_page(request: Request, manager: Manager, registry: Registry, settings: SettingsDep):
    models = [model_info(s, registry) for s in manager.models.values()]
    return _page(
        request, "predict.html", "Predict", models=models, default_model=settings.default_model
    )


@router.get("/console", response_class=RedirectResponse, include_in_schema=False)
def console_root() -> RedirectResponse:
    return RedirectResponse("/", status_code=307)


@router.get("/console/models", response_class=HTMLResponse)
def models_page(
    request: Request, caller: Annotated[Caller, Read], manager: Manager, registry: Registry
):
    models = list_models(caller, manager, registry).models
    return _page(request, "models.html", "Models", models=models)


@router.get("/console/models/{name}", response_class=HTMLResponse, dependencies=[Read])
def model_page(
    request: Request,
    name: str,
    manager: Manager,
    registry: Registry,
    settings: SettingsDep,
    version: int | None = None,
):
    try:
        detail = model_detail(manager.state(name), registry)
    except ConvserveError as exc:
        return _not_found(request, exc)
    versions = {v.version: v for v in detail.version_details}
    shown = version if version in versions else detail.active_version
    if shown is None and versions:
        shown = max(versions)
    return _page(
        request,
        "model.html",
        name,
        model=detail,
        shown=versions.get(shown) if shown is not None else None,
        is_default=name == settings.default_model,
    )


@router.get("/console/train", response_class=HTMLResponse, dependencies=[Read])
def train_page(
    request: Request,
    manager: Manager,
    registry: Registry,
    datasets: Datasets,
    model: str | None = None,
    dataset: str | None = None,
    dataset_version: int | None = None,
):
    models = [model_info(s, registry) for s in manager.models.values()]
    stored = [datasets.version_info(n, datasets.latest(n)) | {"name": n} for n in datasets.names()]
    return _page(
        request,
        "train.html",
        "Train",
        models=models,
        chosen=model,
        datasets=stored,
        chosen_dataset=dataset,
        chosen_version=dataset_version,
        fields=train_fields(),
        bases=list(ARCHITECTURES.values()),
        few_images=FEW_IMAGES_WARNING,
    )


@router.get("/console/datasets", response_class=HTMLResponse, dependencies=[Read])
def datasets_page(request: Request, datasets: Datasets):
    found = [dataset_info(datasets, n) for n in datasets.names()]
    return _page(
        request, "datasets.html", "Datasets", datasets=found, few_images=FEW_IMAGES_WARNING
    )


@router.get("/console/datasets/{name}", response_class=HTMLResponse, dependencies=[ReadPhotos])
def dataset_page(
    request: Request,
    name: str,
    datasets: Datasets,
    manager: Manager,
    registry: Registry,
    version: int | None = None,
):
    try:
        if not NAME_PATTERN.match(name):  # no such dataset: the page's 404, not a 422
            raise not_found(name)
        info = dataset_info(datasets, name)
        shown = version if version is not None else info.latest_version
        listing = datasets.images(name, shown, limit=None)
    except ConvserveError as exc:
        return _not_found(request, exc)
    pages: dict[str, list[dict[str, Any]]] = {c: [] for c in listing["classes"]}
    for item in listing["items"]:
        if len(pages[item["label"]]) < DATASET_PAGE_SIZE:
            pages[item["label"]].append(item)
    per_class = next(v.classes for v in info.versions if v.version == shown)
    return _page(
        request,
        "dataset.html",
        name,
        dataset=info,
        shown=shown,
        classes=listing["classes"],
        per_class=per_class,
        pages=pages,
        images_total=listing["total"],
        page_size=DATASET_PAGE_SIZE,
        trained=_trained_on(name, manager, registry),
    )


def _trained_on(dataset: str, manager: Any, registry: Any) -> list[dict[str, Any]]:
    """The served models' versions that a version of ``dataset`` trained."""
    return [
        {
            "model": model,
            "version": version,
            "dataset_version": registry.metadata(model, version)["dataset"]["version"],
        }
        for model, version in trained_on(registry, dataset)
        if model in manager.models
    ]


@router.get("/console/review", response_class=HTMLResponse, dependencies=[ReadPhotos])
def review_page(
    request: Request,
    manager: Manager,
    registry: Registry,
    captures: Captures,
    model: str | None = None,
    order: str = "least_confident",
):
    """The review queue of one model (the first served, unless named)."""
    models = [model_info(s, registry) for s in manager.models.values()]
    if model not in manager.models:
        model = next(iter(manager.models), None)
    if order not in ORDERS:
        order = "least_confident"
    context: dict[str, Any] = {"models": models, "model": model, "order": order}
    if model is not None:
        state = manager.models[model]
        context.update(
            classes=list(state.active.class_names) if state.active is not None else [],
            dataset=target_dataset(manager, registry, captures, model),
            total=captures.page(model, order, None, 0, 1)[1],
            capture=get_capture(manager, captures, model),
        )
    return _page(request, "review.html", "Review", **context)


@router.get(
    "/console/datasets/{name}/health", response_class=HTMLResponse, dependencies=[ReadPhotos]
)
def health_page(request: Request, name: str, datasets: Datasets, version: int | None = None):
    """A dataset version's label health (the page's script reads the report)."""
    try:
        if not NAME_PATTERN.match(name):
            raise not_found(name)
        latest = datasets.latest(name)
        shown = version if version is not None else latest
        manifest = datasets.manifest(name, shown)
    except ConvserveError as exc:
        return _not_found(request, exc)
    return _page(
        request,
        "health.html",
        f"Label health: {name}",
        name=name,
        version=shown,
        latest=latest,
        classes=manifest["classes"],
    )


@router.get("/console/audit", response_class=HTMLResponse, dependencies=[Read])
def audit_page(request: Request):
    """The audit log, for admin keys (the page's script reads it)."""
    return _page(request, "audit.html", "Audit log")


@router.get("/console/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, caller: Annotated[Caller, Read], jobs: Jobs):
    found = await asyncio.to_thread(list_jobs, caller, jobs, 200)
    return _page(request, "jobs.html", "Jobs", jobs=found.jobs)


@router.get("/console/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, caller: Annotated[Caller, Read], job_id: str, jobs: Jobs):
    try:
        row = await asyncio.to_thread(job_row, jobs, job_id, caller)
    except ConvserveError as exc:
        if exc.status == 404:
            return _not_found(request, exc)
        raise  # a key limited to other models: the page that asks for another key
    return _page(request, "job.html", f"Job {job_id}", job=Job.from_row(row))


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return Response(status_code=204)
