"""Every error leaves as JSON ``{"detail": ..., "code": ...}`` with the right status."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ConvserveError
from app.names import LABEL_REGEX, LABEL_RULE, NAME_REGEX, NAME_RULE

log = logging.getLogger("convserve.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


# Paths of the foreign protocols (TF Serving REST, KServe V2), whose clients read errors as
# {"error": "..."}; the stable code rides along.
PROTOCOL_PREFIXES = ("/v1/models", "/v2")


def error_body(path: str, code: str, detail: str) -> dict[str, str]:
    if path.startswith(PROTOCOL_PREFIXES):
        return {"error": detail, "code": code}
    return {"detail": detail, "code": code}


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    body = error_body(path, code, detail)
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or "request"


async def convserve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConvserveError)
    return error_response(exc.status, exc.code, exc.message, exc.headers, request.url.path)


# Multipart file fields, and how to send each.
_FILE_FIELDS = {
    "file": "one or more image parts named 'file' (curl -F file=@photo.jpg)",
    "dataset": "the archive as a part named 'dataset' (curl -F dataset=@photos.zip)",
}


# A name or class that breaks its rule (the pattern the document gives it): the rule in
# words, and the stable code the checks behind the API use for it.
_NAMES = {
    NAME_REGEX: (
        "invalid_name",
        NAME_RULE,
    ),
    LABEL_REGEX: ("invalid_label", LABEL_RULE),
}
_NAME_CODES = {"name": "invalid_dataset_name", "dataset_name": "invalid_dataset_name"}


def _name_problem(err: dict[str, Any], loc: tuple[object, ...]) -> tuple[str, str] | None:
    """(code, sentence) for a name or class that does not match its rule, else None."""
    rule = _NAMES.get(str((err.get("ctx") or {}).get("pattern")))
    if err.get("type") != "string_pattern_mismatch" or rule is None:
        return None
    code, words = rule
    field = str(loc[-1]) if loc else "name"
    if code == "invalid_name":
        code = _NAME_CODES.get(field, "invalid_parameters")
    return code, f"{err.get('input')!r} is not a usable {field.replace('_', ' ')}: {words}"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    missing_files = []
    codes = set()
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        named = _name_problem(err, loc)
        codes.add(named[0] if named else "invalid_parameters")
        if named:
            msg = named[1]
        if err.get("type") == "missing" and loc[:1] == ("body",) and loc[-1] in _FILE_FIELDS:
            missing_files.append(str(loc[-1]))
            msg = f"missing: send multipart/form-data with {_FILE_FIELDS[str(loc[-1])]}"
        problems.append(f"{_field(loc)}: {msg}")
    content_type = request.headers.get("content-type", "")
    if missing_files and content_type and not content_type.startswith("multipart/form-data"):
        # A raw image or JSON body where the route takes multipart files.
        sent = content_type.split(";")[0]
        detail = f"this endpoint takes multipart/form-data, not {sent}: send " + "; ".join(
            _FILE_FIELDS[f] for f in missing_files
        )
        return error_response(415, "unsupported_media_type", detail, None, request.url.path)
    code = codes.pop() if len(codes) == 1 else "invalid_parameters"
    return error_response(422, code, "; ".join(problems), None, request.url.path)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = exc.headers
    if exc.status_code == 405:
        # Starlette names the methods of the first route that matched the path; a path
        # served by several routes (GET and DELETE /models/{name}) allows all of theirs.
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return error_response(exc.status_code, code, str(exc.detail), headers, request.url.path)


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for the request's path (every route that
    serves it)."""
    app = request.app
    table = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = [
            (
                re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"),
                len(re.sub(r"\{[^/]+?\}", "", path)),  # literal characters: specificity
                {m.upper() for m in operations},
            )
            for path, operations in app.openapi().get("paths", {}).items()
        ]
        app.state.allowed_methods = table
    # The most specific templates that match (/datasets/check over /datasets/{name}).
    matching = [
        (literal, allowed) for pattern, literal, allowed in table if pattern.match(request.url.path)
    ]
    most = max((literal for literal, _ in matching), default=0)
    methods: set[str] = set()
    for literal, allowed in matching:
        if literal == most:
            methods |= allowed
    return sorted(methods)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    detail = "the service hit an unexpected error"
    return error_response(500, "internal_error", detail, None, request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ConvserveError, convserve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
