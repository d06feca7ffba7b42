"""The OpenAPI document describes every answer the service sends, errors included.

FastAPI documents each route's success answer, and for validation errors a body this
service never sends (``{"detail": [...]}``): here every error is ``{"detail", "code"}``
(``{"error", "code"}`` on the TF Serving and KServe paths). This module adds, to every
operation, the error statuses the service can answer there, with that body and the
headers that come with them (``Retry-After`` on 503, ``WWW-Authenticate`` on 401), from
the same rules the code follows:

- 503 everywhere but ``/healthz`` and ``/metrics``: the service is shutting down
  (app.shutdown), and on serving paths a model is loading or its queue is full;
- 422 where a request has parameters or a body (invalid parameters);
- 404 where the path or the query names a model, version, label, job or file (an HTML
  page on the console's paths);
- 400, 413 and 415 where a request has a body (bad archive, image or JSON; too large;
  not an image format);
- 401 on admin operations (those with the bearer security scheme of
  `app.api.deps.require`, once keys are on) and 403 (a key without the scope); 409 on
  those, as they change models or jobs, and 507 on those that write to disk.

``tests/api/test_fuzz.py`` holds the service to this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from app.api.errors import PROTOCOL_PREFIXES
from app.shutdown import DRAIN_EXEMPT

ERROR_BODY = "#/components/schemas/ErrorBody"
PROTOCOL_ERROR_BODY = "#/components/schemas/ProtocolErrorBody"

_DESCRIPTIONS = {
    "400": "the request body cannot be used (bad archive, image or JSON)",
    "401": "no 'Authorization: Bearer <api key>' with a valid key, where one is needed",
    "403": "the key lacks the operation's scope, or is limited to other models",
    "404": "no such model, version, job or file",
    "409": "the operation conflicts with the current state (an active version, an ended job)",
    "413": "the request, a file or an archive is larger than allowed",
    "415": "the request or a file is not in a format the service takes",
    "422": "invalid parameters; `detail` names each field and what is wrong with it",
    "503": "the service is shutting down, or the model is loading, swapping or too busy;"
    " retry after `Retry-After` seconds",
    "507": "the disk the service writes to is full, or the caller's bytes-stored quota is"
    " used (storage_quota)",
}
_HEADERS = {
    "503": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
    "401": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
}
_PATH_NAMES = (
    "{name}",
    "{version}",
    "{label}",
    "{job_id}",
    "{file}",
    "{image_id}",
    "{capture_id}",
    "{key_id}",
)
_NAMING_PARAMETERS = {
    "model",
    "version",
    "a",
    "b",
}  # /predict?model=&version=, /console/train?model=
# Open to callers without a key as predictions are (CONVSERVE_PUBLIC_PREDICTIONS): the
# predictions, what a predicting client reads (the protocols' metadata, the predict page).
KEY_OPTIONAL = ("/predict", ":predict", ":classify", "/infer", "/keys/me", "/metadata")
KEY_OPTIONAL_PATHS = {"/", "/v2/models/{name}", "/v2/models/{name}/versions/{version}"}
_WRITES = ("/finetune", "/datasets", "/models/", "/review")


def _is_page(path: str) -> bool:
    return path == "/" or path.startswith("/console/")


def _error_statuses(path: str, operation: dict[str, Any], admin: bool) -> set[str]:
    statuses = set()
    if path not in DRAIN_EXEMPT:
        statuses.add("503")
    has_body = "requestBody" in operation
    if operation.get("parameters") or has_body:
        statuses.add("422")
    named = {p.get("name") for p in operation.get("parameters", [])}
    if any(part in path for part in _PATH_NAMES) or named & _NAMING_PARAMETERS:
        statuses.add("404")
    if has_body:
        statuses.update(("400", "413", "415"))
    if admin:
        statuses.update(("401", "403", "409"))
        if path.startswith(_WRITES):
            statuses.add("507")
    return statuses


def _document(spec: dict[str, Any]) -> None:
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["ProtocolErrorBody"] = {
        "title": "ProtocolErrorBody",
        "type": "object",
        "description": "An error on the TF Serving and KServe V2 paths, as their clients read it.",
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
        "required": ["error", "code"],
    }
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            _apply_body_rules(operation, schemas)
    for path, operations in spec.get("paths", {}).items():
        body = PROTOCOL_ERROR_BODY if path.startswith(PROTOCOL_PREFIXES) else ERROR_BODY
        for operation in operations.values():
            if "security" in operation and (
                path.endswith(KEY_OPTIONAL) or path in KEY_OPTIONAL_PATHS
            ):
                # Predictions take a key only where CONVSERVE_PUBLIC_PREDICTIONS=false, and
                # /keys/me answers with or without one: none, or the bearer.
                operation["security"] = [{}, {"bearer": []}]
            admin = "security" in operation  # the routes that depend on a key's scope
            responses = operation.setdefault("responses", {})
            for status in sorted(_error_statuses(path, operation, admin)):
                entry = responses.get(status) or {}
                entry["description"] = entry.get("description") or _DESCRIPTIONS[status]
                if status == "422":  # FastAPI's own, which this service does not send
                    entry["description"] = _DESCRIPTIONS[status]
                if status in ("401", "403", "404") and _is_page(path):
                    # The console's pages: "not found", or a page that asks for a key.
                    entry["content"] = {"text/html": {"schema": {"type": "string"}}}
                else:
                    entry["content"] = {"application/json": {"schema": {"$ref": body}}}
                if status in _HEADERS:
                    entry["headers"] = _HEADERS[status]
                responses[status] = entry


def _apply_body_rules(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Rules between a form's fields, declared by its route (``openapi_extra`` with
    ``x-body-rules``: JSON Schema keywords), added to the form's schema."""
    rules = operation.pop("x-body-rules", None)
    if not rules:
        return
    for media in operation.get("requestBody", {}).get("content", {}).values():
        ref = media.get("schema", {}).get("$ref", "")
        target = schemas.get(ref.rsplit("/", 1)[-1])
        if target is not None:
            target.update(rules)


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) the fully documented version."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _document(spec)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    _reference_pages(app)


# Swagger UI and ReDoc from the package's own copies (app/console/static/vendor), so the
# reference works offline, as the console does; the app is made with docs_url=None.
VENDOR = "/console/static/vendor"


# Nothing loaded from elsewhere: ReDoc's sidebar asks a CDN for its logo, which this
# refuses. (Swagger UI starts from an inline script, ReDoc's styles are injected inline.)
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _reference_pages(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return _no_elsewhere(
            get_swagger_ui_html(
                openapi_url="/openapi.json",
                title=f"{app.title} API",
                swagger_js_url=f"{VENDOR}/swagger-ui-bundle.js",
                swagger_css_url=f"{VENDOR}/swagger-ui.css",
                swagger_favicon_url="/console/static/icon.svg",
            )
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return _no_elsewhere(
            get_redoc_html(
                openapi_url="/openapi.json",
                title=f"{app.title} API",
                redoc_js_url=f"{VENDOR}/redoc.standalone.js",
                redoc_favicon_url="/console/static/icon.svg",
                with_google_fonts=False,
            )
        )


def _no_elsewhere(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = _CSP
    return page
