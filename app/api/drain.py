"""The drain's answer: while the service shuts down (`app.shutdown`), new requests get
503 ``shutting_down``."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.shutdown import DRAIN_EXEMPT, DrainState

DRAIN_RETRY_AFTER_SECONDS = 5


class DrainMiddleware:
    """Answers 503 ``shutting_down`` to requests that arrive while the service drains."""

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.state.draining and scope["path"] not in DRAIN_EXEMPT:
            response = error_response(
                503,
                "shutting_down",
                "the service is shutting down; send the request again (to another replica, "
                "or after the restart)",
                {"Retry-After": str(DRAIN_RETRY_AFTER_SECONDS), "Connection": "close"},
                scope["path"],
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
