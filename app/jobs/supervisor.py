"""Runs queued fine-tuning jobs as child processes of the service and finishes them.

The supervisor claims queued jobs (up to ``max_concurrent_jobs`` at once), starts
``python -m app run-job ID`` for each, and when the process ends: promotes the new
version (load, warm up, switch) and marks the job ``succeeded``; or queues the job again
when the process died mid-training (it resumes from its last completed epoch); or kills a
job that does not stop soon after it was cancelled. On start it queues again the jobs a
killed service left ``running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from app.config import Settings
from app.errors import ConvserveError
from app.jobs.lifecycle import (
    CANCEL_GRACE_SECONDS,
    STOP_GRACE_SECONDS,
    Next,
    promotion_result,
    settle,
    start_rollout,
    succeed,
)
from app.jobs.runner import remove_job_files, study_command
from app.jobs.store import CANCELLING, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore
from app.serving.manager import ModelManager
from app.serving.metrics import ServiceMetrics
from app.shutdown import DrainState
from app.storage.registry import ModelRegistry

log = logging.getLogger("convserve.jobs")


class JobSupervisor:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        registry: ModelRegistry,
        manager: ModelManager,
        metrics: ServiceMetrics,
        drain: DrainState | None = None,
    ) -> None:
        self.settings = settings
        self.drain = drain
        self.store = store
        self.registry = registry
        self.manager = manager
        self.metrics = metrics
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        # The jobs this service claimed and has not yet recorded an outcome for: their
        # process runs, or it ended and the job is being promoted.
        self._held: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._stopping = False
        # Who holds the leases of the jobs this service runs.
        self.owner = f"api@{socket.gethostname()}:{os.getpid()}"
        self.shared_store = settings.database_url is not None
        # With a broker, jobs go to the training workers' queue and this service never
        # trains (app.jobs.worker).
        self.broker: Any = None
        if settings.broker_url:
            from app.jobs.worker import broker_for

            self.broker = broker_for(settings.broker_url)

    async def start(self) -> None:
        if self.broker is not None:  # the workers run the jobs; only keep the job metrics
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
            return
        # A store of its own: every job left running is this service's orphan. A shared
        # store: only jobs whose lease ran out (other replicas' and workers' live jobs stay).
        requeued = await asyncio.to_thread(
            self.store.requeue_orphans,
            self.settings.max_job_attempts,
            self.owner if self.shared_store else None,
        )
        if requeued:
            log.warning(
                "jobs left running by a stopped service (queued again, or ended when out of "
                "attempts or being cancelled): %s",
                ", ".join(requeued),
            )
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    def wake(self) -> None:
        self._wakeup.set()

    async def submit(self, job_id: str) -> None:
        """A new job is queued in the store: send it to the workers, or take it here."""
        if self.broker is None:
            self.wake()
            return
        from app.jobs.worker import send_job

        await asyncio.to_thread(send_job, self.broker, job_id)

    async def stop(self) -> None:
        """Stop taking jobs and stop the job processes; their jobs are queued again and
        resume from their last completed epoch at the next start."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        procs = dict(self._procs)
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if procs:
            waits = [asyncio.create_task(proc.wait()) for proc in procs.values()]
            _, late = await asyncio.wait(waits, timeout=STOP_GRACE_SECONDS)
            for proc in procs.values():
                if proc.returncode is None:
                    log.warning("job process %d did not stop in time; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if late:
                await asyncio.wait(late, timeout=5)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A job still running in the store: its process was stopped, or it ended and the
        # promotion of its new version was cut short. Either way it runs again at the next
        # start (a job whose version is written only promotes it), without counting an attempt.
        for job_id in sorted(self._held):
            if await asyncio.to_thread(self.store.release, job_id):
                log.info("job %s stopped with the service; it resumes at the next start", job_id)
        self._held.clear()
        if self.broker is not None:
            self.broker.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                log.exception("job supervisor tick failed")
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), 1.0)

    async def _tick(self) -> None:
        counts = await asyncio.to_thread(self.store.counts)
        for status in (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, "cancelled"):
            self.metrics.jobs.labels(status).set(counts.get(status, 0))
        if self.broker is not None:
            return
        await self._renew_leases()
        if self.drain is not None and self.drain.draining:
            return  # shutting down: queued jobs wait for the next start
        while len(self._procs) < self.settings.max_concurrent_jobs:
            job = await asyncio.to_thread(
                self.store.claim_next, self.owner, self.settings.job_lease_seconds
            )
            if job is None:
                break
            await self._spawn(job)

    async def _renew_leases(self) -> None:
        """Renew the leases of this service's jobs; stop a job whose lease another process
        took over (this service was cut off for longer than the lease). In a shared store,
        also queue again the jobs whose owner stopped renewing."""
        running = list(self._procs)
        held = await asyncio.to_thread(
            self.store.renew, running, self.owner, self.settings.job_lease_seconds
        )
        for job_id in set(running) - set(held):
            proc = self._procs.get(job_id)
            status = await asyncio.to_thread(self.store.status, job_id)
            if proc is not None and status in (RUNNING, CANCELLING):
                log.warning("job %s: its lease went to another process; stopping it", job_id)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if self.shared_store:
            expired = await asyncio.to_thread(
                self.store.expire_leases, self.settings.max_job_attempts
            )
            if expired:
                log.warning("jobs whose owner stopped renewing: %s", ", ".join(expired))

    async def _spawn(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        # The child inherits stdout/stderr: its log lines join the service's.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", "run-job", job_id, "--owner", self.owner
        )
        self._procs[job_id] = proc
        self._held.add(job_id)
        await asyncio.to_thread(self.store.update, job_id, pid=proc.pid)
        log.info("job %s started (attempt %d, pid %d)", job_id, job["attempts"], proc.pid)
        task = asyncio.get_running_loop().create_task(self._watch(job_id, proc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        waited_cancelling = 0.0
        while True:
            try:
                await asyncio.wait_for(proc.wait(), 1.0)
                break
            except TimeoutError:
                status = await asyncio.to_thread(self.store.status, job_id)
                if status == CANCELLING:
                    waited_cancelling += 1.0
                    if waited_cancelling >= CANCEL_GRACE_SECONDS:
                        log.warning("job %s ignored its cancellation; killing it", job_id)
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
        self._procs.pop(job_id, None)
        try:
            if await self._after_exit(job_id, proc.returncode):
                self._held.discard(job_id)
        finally:
            self.wake()

    async def _after_exit(self, job_id: str, returncode: int | None) -> bool:
        """Record the outcome of a job whose process ended (`app.jobs.lifecycle`). Returns
        False when the job is left for `stop` to queue again (the service is stopping)."""
        next_step, job = await asyncio.to_thread(
            settle,
            self.store,
            self.settings,
            job_id,
            returncode,
            owner=self.owner,
            stopping=self._stopping,
        )
        if next_step is Next.LEFT:
            return False
        if next_step is Next.PROMOTE and job is not None:
            await self._promote(job)
        return True

    async def _promote(self, job: dict[str, Any]) -> None:
        """Load, warm up and switch to the new version in this service (the model is added
        when the job created it), then record the job's success."""
        name = job["model"]
        version = int(job["result"]["version"])
        state = self.manager.models.get(name)
        previous = state.active.version if state is not None and state.active else None
        result = promotion_result(job, previous)
        rollouts = self.manager.rollouts.store
        if job.get("rollout") and rollouts is not None and name in self.manager.models:
            try:
                await self.manager.resolve(name, version)  # loaded before any traffic
                if await asyncio.to_thread(start_rollout, rollouts, job, previous, result):
                    await self.manager.rollouts.sync(self.manager)
                    job = {**job, "promote": False}
                else:
                    job = {**job, "promote": True}  # nothing serves yet: it is promoted
            except ConvserveError as exc:
                result["promotion_error"] = f"the rollout could not start: {exc.message}"
        elif job.get("rollout"):
            job = {**job, "promote": True}
        if job["promote"]:
            try:
                if name in self.manager.models:
                    await self.manager.activate(name, version)
                else:  # the job created this model
                    self.registry.set_active(name, version)
                    await self.manager.add_model(name)
                result["promoted"] = True
            except ConvserveError as exc:
                result["promotion_error"] = exc.message
        elif name not in self.manager.models:  # a new model serves its only version
            await self.manager.add_model(name)
        await asyncio.to_thread(succeed, self.store, self.settings, job, result)
        command = study_command(self.settings, name, version)
        if command is not None:
            task = asyncio.get_running_loop().create_task(self._study(command, name, version))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _study(self, command: list[str], name: str, version: int) -> None:
        """Run the new version's precision study in a process of its own, then serve the
        version at the precision it chose."""
        proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
        try:
            code = await proc.wait()
        except asyncio.CancelledError:  # the service stops: the version stays at f32
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if code != 0:
            log.warning("precision study of %s version %d ended with %s", name, version, code)
            return
        with contextlib.suppress(ConvserveError):
            await self.manager.refresh(name, version)

    def cleanup(self, job_id: str) -> None:
        remove_job_files(self.settings, job_id)
