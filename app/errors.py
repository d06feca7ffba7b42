"""The one error type the service turns into an HTTP answer."""

from __future__ import annotations


class ConvserveError(Exception):
    """An error with a stable snake_case ``code``, a human sentence and an HTTP status."""

    status = 400

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}
