"""Records every train and admin action in the audit log, with the status it got."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("convserve.audit")


class AuditLog:
    """ASGI middleware: after a request whose route needed the train or admin scope (the
    `app.api.deps.require` dependency marks it), writes who (key id), what (method and
    path), from where, the status and the scope to the audit log."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            state = scope.get("state") or {}
            marked, auth = state.get("audit"), state.get("auth")
            if marked is not None and auth is not None:
                key_id, needed = marked
                client = scope.get("client")
                try:
                    await asyncio.to_thread(
                        auth.keys.record,
                        key_id,
                        scope["method"],
                        scope["path"],
                        status,
                        client[0] if client else None,
                        needed,
                    )
                except Exception:
                    log.exception("could not write the audit log")
