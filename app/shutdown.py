"""Graceful shutdown: the first SIGTERM (or Ctrl-C) drains the service before it stops.

1. Draining, for ``shutdown_drain_seconds``: the port stays open; every new request gets 503
   ``shutting_down`` with ``Retry-After`` and ``Connection: close`` (``/readyz`` included, so
   a load balancer takes the replica out; ``/healthz`` stays 200, the process is alive),
   requests already accepted run to their answer, and job event streams end (an
   EventSource reconnects with ``Last-Event-ID``, to another replica or after the restart).
2. Then uvicorn's own shutdown: it stops listening, waits up to ``graceful_timeout_seconds``
   for the requests still in flight, and runs the lifespan's shutdown, which stops the job
   processes (they are queued again and resume from their last epoch at the next start).

A second signal skips what is left of the drain; a second Ctrl-C during uvicorn's wait
quits at once (uvicorn's own behaviour).
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

log = logging.getLogger("convserve.shutdown")

# Answered normally while draining: liveness and metrics describe the process, not whether
# it takes work.
DRAIN_EXEMPT = frozenset({"/healthz", "/metrics"})


class DrainState:
    """Whether the service is draining; shared by the server, the middleware and streams."""

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def draining(self) -> bool:
        return self.since is not None

    def start(self) -> None:
        if self.since is None:
            self.since = time.monotonic()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase before its own graceful shutdown."""

    def __init__(self, config: uvicorn.Config, state: DrainState, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain = state
        self.drain_seconds = drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or self.drain_seconds <= 0:
            super().handle_exit(sig, frame)  # second signal: stop now
            return
        # Re-raised by uvicorn once it has shut down, as for its own handling.
        self._captured_signals.append(sig)
        self.drain.start()
        log.warning(
            "%s: draining for %.1f s (new requests get 503), then stopping; "
            "send it again to stop now",
            signal.Signals(sig).name,
            self.drain_seconds,
        )

    async def on_tick(self, counter: int) -> bool:
        since = self.drain.since
        if since is not None and time.monotonic() - since >= self.drain_seconds:
            self.should_exit = True
        return await super().on_tick(counter)
