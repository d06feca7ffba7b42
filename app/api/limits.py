"""Refuse an oversized body from its Content-Length, before any of it is read."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from app.api.errors import error_body

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


class BodySizeLimit:
    """Pure ASGI middleware (no per-request overhead beyond a header lookup): answers 413
    with the usual error body when a POST to one of ``limits``' paths announces more bytes
    than allowed."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Mapping[str, int],
        prefix_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.limits = dict(limits)
        self.prefix_limits = dict(prefix_limits or {})

    def _limit(self, path: str) -> int | None:
        limit = self.limits.get(path)
        if limit is None:
            for prefix, value in self.prefix_limits.items():
                if path.startswith(prefix):
                    return value
        return limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        limit = self._limit(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is not None and scope.get("method") == "POST":
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            if (length.isascii() and length.isdigit()) and int(length) > limit:
                detail = f"the request body is larger than the limit of {limit} bytes"
                body = json.dumps(error_body(scope["path"], "upload_too_large", detail)).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
