"""A stop request that waits for the bookkeeping in progress.

A job process turns the service's SIGTERM into an exception raised wherever training is
(app.jobs.runner). Between one epoch and the next, training writes several files that
describe the same point (the checkpoint, the best epoch, the history, the phases done); a
stop between two of those writes would leave them disagreeing, and the job would resume
from a state that never existed. Inside `held`, a stop is kept and raised when the block
ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_depth = 0
_pending: BaseException | None = None


def request_stop(exc: BaseException) -> None:
    """Raise ``exc`` now, or at the end of the `held` block in progress."""
    global _pending
    if _depth:
        _pending = exc
        return
    raise exc


def hold() -> None:
    global _depth
    _depth += 1


def release() -> None:
    """End a `hold`; the outermost one raises the stop requested meanwhile."""
    global _depth, _pending
    _depth = max(_depth - 1, 0)
    if not _depth and _pending is not None:
        exc, _pending = _pending, None
        raise exc


@contextlib.contextmanager
def held() -> Iterator[None]:
    hold()
    try:
        yield
    finally:
        release()
