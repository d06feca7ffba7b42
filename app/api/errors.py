"""Every error leaves as JSON ``{"detail": ..., "code": ...}`` with the right status."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ConvserveError

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


async def _convserve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConvserveError)
    return error_response(exc.status, exc.code, exc.message, exc.headers, request.url.path)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{_field(tuple(err.get('loc', ())))}: {msg}")
    return error_response(422, "invalid_parameters", "; ".join(problems), None, request.url.path)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers, request.url.path)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    detail = "the service hit an unexpected error"
    return error_response(500, "internal_error", detail, None, request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ConvserveError, _convserve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
