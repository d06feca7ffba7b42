"""Rollouts in serving: which version answers a request, the shadow runs, the live figures
and the guards.

- ``canary``: a request that does not pin a version is answered by the candidate with
  probability ``share`` (the answer names the version). A candidate that fails a request
  is counted against it and the active version answers instead. The answers the candidate
  gave are run again on the active version off the request path, for agreement.
- ``shadow``: every request (or a ``share`` of them) that does not pin a version is also
  run on the candidate, off the request path, after the active version answered; the
  client only ever sees the active version's answer. The two agree when their top
  classes are the same.

Shadow work is bounded (`MAX_SHADOWS_IN_FLIGHT` at once; past it a comparison is skipped
and counted) and costs one more inference for each request it covers.

Each replica keeps figures per version (requests, errors, a latency histogram, answers
compared and agreeing, unknown answers), writes them to the shared database every
`SYNC_SECONDS` and reads the others' (`RolloutStore`); the guards judge the sum, and any
replica that sees a bound passed ends the rollout for all of them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from app.errors import ConvserveError
from app.serving.metrics import ServiceMetrics
from app.storage.rollouts import GUARD_DEFAULTS, RolloutStore

if TYPE_CHECKING:
    from app.serving.manager import ModelManager

log = logging.getLogger("convserve.rollout")
SYNC_SECONDS = 1.0
MAX_SHADOWS_IN_FLIGHT = 64
# Latency histogram bounds, in ms (the last bucket is everything above).
BOUNDS_MS = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000)


@dataclass
class Figures:
    """What one replica saw of one version during a rollout."""

    requests: int = 0
    errors: int = 0
    unknown: int = 0
    compared: int = 0
    agreed: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS_MS) + 1))

    def observe(self, seconds: float, ok: bool, unknown: int = 0) -> None:
        self.requests += 1
        self.errors += 0 if ok else 1
        self.unknown += unknown
        self.latency[bisect.bisect_left(BOUNDS_MS, seconds * 1000)] += 1

    def add(self, other: dict[str, Any]) -> None:
        for key in ("requests", "errors", "unknown", "compared", "agreed"):
            setattr(self, key, getattr(self, key) + int(other.get(key, 0)))
        for i, n in enumerate(other.get("latency", [])[: len(self.latency)]):
            self.latency[i] += int(n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "unknown": self.unknown,
            "compared": self.compared,
            "agreed": self.agreed,
            "latency": list(self.latency),
        }

    def percentile(self, p: float) -> float | None:
        """The latency under which ``p`` percent of requests took (the bucket's upper
        bound, in ms); None without requests."""
        total = sum(self.latency)
        if not total:
            return None
        seen = 0
        for i, n in enumerate(self.latency):
            seen += n
            if seen >= total * p / 100:
                return float(BOUNDS_MS[i]) if i < len(BOUNDS_MS) else float("inf")
        return None

    def summary(self) -> dict[str, Any]:
        def rate(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        p99 = self.percentile(99)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": rate(self.errors, self.requests),
            "latency_ms": {
                "p50": self.percentile(50),
                "p95": self.percentile(95),
                "p99": p99 if p99 != float("inf") else f">{BOUNDS_MS[-1]}",
            },
            "compared": self.compared,
            "agreement": rate(self.agreed, self.compared),
            "unknown_rate": rate(self.unknown, self.requests),
        }


@dataclass
class _Running:
    row: dict[str, Any]
    figures: dict[int, Figures] = field(default_factory=dict)

    def at(self, version: int) -> Figures:
        return self.figures.setdefault(version, Figures())


def guard_breach(row: dict[str, Any], candidate: Figures) -> str | None:
    """Why the rollout must stop, judged on the candidate's figures summed across
    replicas, or None."""
    guards = {**GUARD_DEFAULTS, **row["guards"]}
    enough = candidate.requests >= guards["min_requests"]
    rate = candidate.errors / candidate.requests if candidate.requests else 0.0
    if enough and guards["max_error_rate"] is not None and rate > guards["max_error_rate"]:
        return (
            f"the candidate's error rate {rate:.1%} passed the bound of"
            f" {guards['max_error_rate']:.1%} ({candidate.errors} of {candidate.requests})"
        )
    p99 = candidate.percentile(99)
    if (
        enough
        and guards["max_p99_ms"] is not None
        and p99 is not None
        and p99 > guards["max_p99_ms"]
    ):
        return (
            f"the candidate's p99 latency {p99:g} ms passed the bound of {guards['max_p99_ms']} ms"
        )
    if (
        guards["min_agreement"] is not None
        and candidate.compared >= guards["min_requests"]
        and candidate.agreed / candidate.compared < guards["min_agreement"]
    ):
        share = candidate.agreed / candidate.compared
        return (
            f"agreement with the active version {share:.1%} fell under the bound of"
            f" {guards['min_agreement']:.1%} ({candidate.compared} compared)"
        )
    return None


class Rollouts:
    """The rollouts this replica follows, and its share of their figures."""

    def __init__(self, store: RolloutStore | None, metrics: ServiceMetrics) -> None:
        self.store, self.metrics = store, metrics
        self.replica = uuid.uuid4().hex[:12]
        self.running: dict[str, _Running] = {}
        self.random = random.Random()
        self._shadows: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, manager: ModelManager) -> None:
        if self.store is None:
            return
        await self.sync(manager)
        self._task = asyncio.get_running_loop().create_task(self._run(manager))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._shadows):
            task.cancel()

    async def _run(self, manager: ModelManager) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                await self.sync(manager)
            except Exception:
                log.exception("rollouts: could not sync with the database")

    async def sync(self, manager: ModelManager) -> None:
        """Write this replica's figures, follow the rollouts the database holds (load a
        new candidate, drop an ended one), and stop any whose candidate passed a guard."""
        assert self.store is not None
        async with self._lock:
            store = self.store
            for running in list(self.running.values()):
                figures = {v: f.to_dict() for v, f in running.figures.items()}
                await asyncio.to_thread(
                    store.save_figures, running.row["id"], self.replica, figures
                )
            rows = await asyncio.to_thread(store.running)
            for model in list(self.running):
                if model not in rows or rows[model]["id"] != self.running[model].row["id"]:
                    del self.running[model]
            for model, row in rows.items():
                state = manager.models.get(model)
                if state is None:
                    continue
                if state.active is not None and state.active.version == int(row["version"]):
                    # Activated some other way (the version list, another replica).
                    await asyncio.to_thread(
                        store.end, row["id"], "promoted", "the candidate was activated"
                    )
                    self.running.pop(model, None)
                    continue
                if model not in self.running:
                    try:
                        await manager.resolve(model, int(row["version"]))  # loaded before use
                    except ConvserveError as exc:
                        await asyncio.to_thread(
                            store.end,
                            row["id"],
                            "stopped",
                            f"the candidate could not be loaded: {exc.message}",
                        )
                        continue
                    self.running[model] = _Running(row)
                running = self.running[model]
                total = await asyncio.to_thread(self.totals, row["id"])
                reason = guard_breach(row, total.get(int(row["version"]), Figures()))
                if reason is not None:
                    log.warning(
                        "rollout of %s version %s stopped: %s", model, row["version"], reason
                    )
                    await asyncio.to_thread(store.end, row["id"], "stopped", reason)
                    self.running.pop(model, None)
                del running

    def totals(self, rollout_id: str) -> dict[int, Figures]:
        """Every replica's figures of a rollout, summed per version."""
        assert self.store is not None
        summed: dict[int, Figures] = {}
        for version, parts in self.store.figures(rollout_id).items():
            total = summed.setdefault(version, Figures())
            for part in parts:
                total.add(part)
        return summed

    # -- the request path ----------------------------------------------------------------------

    def route(self, model: str, version: int | None) -> int | None:
        """The version that answers a request: the one it pins, else the canary
        candidate for ``share`` of requests, else None (the active one)."""
        running = self.running.get(model)
        if version is not None or running is None or running.row["mode"] != "canary":
            return version
        if self.random.random() < running.row["share"]:
            return int(running.row["version"])
        return None

    def candidate(self, model: str) -> int | None:
        running = self.running.get(model)
        return int(running.row["version"]) if running is not None else None

    def observe(self, model: str, version: int, seconds: float, ok: bool, unknown: int = 0) -> None:
        """Count an answered (or failed) request of a version that did not pin one."""
        running = self.running.get(model)
        if running is not None:
            running.at(version).observe(seconds, ok, unknown)

    def compare_later(
        self,
        manager: ModelManager,
        model: str,
        served: int,
        rows: Sequence[np.ndarray],
        class_names: Sequence[str],
        run: Callable[[int | None], Awaitable[Any]],
    ) -> None:
        """After ``served`` answered: in shadow mode run the candidate on the same images
        (for ``share`` of requests), in canary mode run the active version on what the
        candidate answered; compare the top classes. ``run(version)`` classifies the
        request's images on a version (None: the active one)."""
        running = self.running.get(model)
        if running is None:
            return
        row, candidate = running.row, int(running.row["version"])
        if row["mode"] == "shadow":
            if served == candidate or self.random.random() >= row["share"]:
                return
            target: int | None = candidate
        elif served == candidate:
            target = None  # the active version
        else:
            return
        if len(self._shadows) >= MAX_SHADOWS_IN_FLIGHT:
            self.metrics.shadow.labels(model, str(candidate), "skipped").inc(len(rows))
            return
        guesses = [class_names[int(r.argmax())] for r in rows]

        async def shadow() -> None:
            started = time.perf_counter()
            try:
                answer = await run(target)
            except Exception as exc:
                if target is not None:
                    running.at(candidate).observe(time.perf_counter() - started, False)
                    self.metrics.shadow.labels(model, str(candidate), "error").inc(len(rows))
                log.debug("shadow run of %s failed: %s", model, exc)
                return
            seconds = time.perf_counter() - started
            figures = running.at(candidate)
            if target is not None:
                figures.observe(seconds, True)
                self.metrics.shadow_latency.labels(model, str(candidate)).observe(seconds)
            answers = [answer.loaded.class_names[int(r.argmax())] for r in answer.rows]
            agreed = sum(a == b for a, b in zip(guesses, answers, strict=True))
            figures.compared += len(answers)
            figures.agreed += agreed
            self.metrics.shadow.labels(model, str(candidate), "agree").inc(agreed)
            self.metrics.shadow.labels(model, str(candidate), "disagree").inc(len(answers) - agreed)

        task = asyncio.get_running_loop().create_task(shadow())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait for the shadow runs in flight (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while self._shadows and time.monotonic() < end:
            await asyncio.sleep(0.01)
