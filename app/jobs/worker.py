"""Training workers on a Redis queue: ``python -m app worker``.

When ``CONVSERVE_BROKER_URL`` names a Redis server, the API replicas do not train: they
write the job into the shared job store and send its id to the ``convserve-jobs`` queue
(Dramatiq). A worker takes the message, claims the job in the store with a lease, and runs
it as ``python -m app run-job ID`` in a freshly started process (TensorFlow is never
forked), renewing the lease every few seconds. The job's dataset and its resume state
(the workspace with the last completed epoch) live in the data folder, which the workers
and the API replicas share, and the new version goes to the shared model registry, whose
active pointer the replicas follow.

Delivery is at least once and the store makes it exactly once: a second delivery of the
message, or a second worker, finds the job claimed under a live lease and does nothing. A
worker that dies (SIGKILL, host lost) stops renewing; every worker sweeps the store for
leases that ran out, queues those jobs again (or fails them after ``max_job_attempts``) and
sends their ids again, so another worker resumes them from their last completed epoch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from app.config import Settings
from app.jobs.lifecycle import (
    CANCEL_GRACE_SECONDS,
    STOP_GRACE_SECONDS,
    Next,
    promotion_result,
    settle,
    start_rollout,
    succeed,
)
from app.jobs.runner import store_for, study_command
from app.jobs.store import CANCELLING, QUEUED, RUNNING
from app.storage.factory import open_registry
from app.storage.rollouts import RolloutStore
from app.storage.sql import settings_database

log = logging.getLogger("convserve.worker")

QUEUE_NAME = "convserve-jobs"
ACTOR_NAME = "train_job"
# Dramatiq stops an actor after 10 minutes by default; a job runs as long as its budget.
TIME_LIMIT_MS = 7 * 24 * 3600 * 1000


def broker_for(url: str) -> RedisBroker:
    """The Redis broker at ``url``, with the jobs queue declared."""
    broker = RedisBroker(url=url)
    broker.declare_queue(QUEUE_NAME)
    return broker


def send_job(broker: RedisBroker, job_id: str) -> None:
    """Put ``job_id`` on the jobs queue (the message carries nothing else)."""
    broker.enqueue(
        dramatiq.Message(
            queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, args=(job_id,), kwargs={}, options={}
        )
    )


class TrainingWorker:
    def __init__(self, settings: Settings) -> None:
        if not settings.broker_url:
            raise ValueError("a worker needs CONVSERVE_BROKER_URL (a redis:// URL)")
        self.settings = settings
        self.store = store_for(settings)
        self.registry = open_registry(settings)
        self.broker = broker_for(settings.broker_url)
        self.owner = f"worker@{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        dramatiq.actor(
            broker=self.broker,
            actor_name=ACTOR_NAME,
            queue_name=QUEUE_NAME,
            max_retries=0,  # the store counts attempts (max_job_attempts), not Dramatiq
            time_limit=TIME_LIMIT_MS,
        )(self.train_job)

    # -- one job -----------------------------------------------------------------------------

    def train_job(self, job_id: str) -> None:
        """The actor: run ``job_id`` if this worker can claim it."""
        if self.stopping.is_set():
            send_job(self.broker, job_id)  # hand it to another worker
            return
        job = self.store.claim(
            job_id, self.owner, self.settings.job_lease_seconds, self.settings.max_job_attempts
        )
        if job is None:
            log.info("job %s: not claimed (another worker has it, or it ended)", job_id)
            return
        log.info("job %s claimed by %s (attempt %d)", job_id, self.owner, job["attempts"])
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "run-job", job_id, "--owner", self.owner]
        )
        with self._lock:
            self._procs[job_id] = proc
        try:
            lost = self._watch(job_id, proc)
        finally:
            with self._lock:
                self._procs.pop(job_id, None)
        if not lost:
            self._after_exit(job_id, proc.returncode)

    def _watch(self, job_id: str, proc: subprocess.Popen[bytes]) -> bool:
        """Renew the lease while the job process runs; kill it when the job is cancelled
        and does not stop, or when the lease went to another worker (returns True then)."""
        renew_every = max(self.settings.job_lease_seconds / 3, 0.5)
        last_renewal = time.monotonic()
        cancelling_since: float | None = None
        stop_sent_at: float | None = None
        while proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.5)
            now = time.monotonic()
            if self.stopping.is_set() and stop_sent_at is None:
                stop_sent_at = now
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            if stop_sent_at is not None and now - stop_sent_at > STOP_GRACE_SECONDS:
                proc.kill()
            if now - last_renewal < renew_every:
                continue
            last_renewal = now
            try:
                held = self.store.renew([job_id], self.owner, self.settings.job_lease_seconds)
                status = self.store.status(job_id)
            except Exception:  # the database is briefly away: try again at the next turn
                log.exception("job %s: could not renew the lease", job_id)
                continue
            if not held and status in (RUNNING, CANCELLING):
                log.warning("job %s: its lease went to another worker; stopping it", job_id)
                proc.kill()
                proc.wait()
                return True
            if status == CANCELLING:
                cancelling_since = cancelling_since or now
                if now - cancelling_since > CANCEL_GRACE_SECONDS:
                    log.warning("job %s ignored its cancellation; killing it", job_id)
                    proc.kill()
        return False

    def _after_exit(self, job_id: str, returncode: int | None) -> None:
        """Record the outcome of a job whose process ended (`app.jobs.lifecycle`)."""
        next_step, job = settle(
            self.store,
            self.settings,
            job_id,
            returncode,
            owner=self.owner,
            stopping=self.stopping.is_set(),
        )
        if next_step is Next.LEFT and not self.store.release(job_id):
            return
        if next_step in (Next.LEFT, Next.REQUEUED):
            # For another worker (or this one after its restart) to resume from the last
            # completed epoch.
            send_job(self.broker, job_id)
        elif next_step is Next.PROMOTE and job is not None:
            self._promote(job)
            self._study(job["model"], int(job["result"]["version"]))

    def _study(self, name: str, version: int) -> None:
        """The new version's precision study, after its job (the version serves at f32
        meanwhile; the replicas follow the study's choice when it is written)."""
        command = study_command(self.settings, name, version)
        if command is None or self.stopping.is_set():
            return
        code = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
        if code != 0:
            log.warning("precision study of %s version %d ended with %s", name, version, code)

    def _promote(self, job: dict[str, Any]) -> None:
        """Point the model at the new version (the API replicas follow the pointer), then
        record the job's success."""
        name, version = job["model"], int(job["result"]["version"])
        baseline = self.registry.active_version(name)
        result = promotion_result(job, baseline)
        promote = job["promote"]
        if job.get("rollout"):
            # The API replicas follow the rollout from the shared database (and load the
            # candidate); a new model has nothing to roll out against: it is promoted.
            rollouts = RolloutStore(settings_database(self.settings))
            try:
                promote = not start_rollout(rollouts, job, baseline, result)
            finally:
                rollouts.close()
        if promote:
            try:
                self.registry.set_active(name, version)
                result["promoted"] = True
            except Exception as exc:
                result["promotion_error"] = str(exc)[:300]
        succeed(self.store, self.settings, job, result)

    # -- the worker ---------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Queue again the jobs whose owner stopped renewing its lease, and send them."""
        requeued = self.store.expire_leases(self.settings.max_job_attempts)
        for job_id in requeued:
            if self.store.status(job_id) == QUEUED:
                log.warning("job %s: its worker stopped renewing the lease; sent again", job_id)
                send_job(self.broker, job_id)
        return requeued

    def _sweep_forever(self) -> None:
        period = max(self.settings.job_lease_seconds / 3, 0.5)
        while not self.stopping.wait(period):
            try:
                self.sweep()
            except Exception:
                log.exception("lease sweep failed")

    def run(self) -> int:
        """Take jobs until SIGTERM or SIGINT; then stop the running jobs so that they
        resume elsewhere."""
        worker = dramatiq.Worker(self.broker, worker_threads=self.settings.max_concurrent_jobs)
        # Dramatiq fetches twice as many messages as it has threads; a job message held
        # while another job trains would keep it from an idle worker for minutes.
        worker.queue_prefetch = self.settings.max_concurrent_jobs
        done = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            self.stopping.set()
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        worker.start()
        sweeper = threading.Thread(target=self._sweep_forever, name="lease-sweep", daemon=True)
        sweeper.start()
        log.info(
            "worker %s takes jobs from %s (%d at a time)",
            self.owner,
            QUEUE_NAME,
            self.settings.max_concurrent_jobs,
        )
        done.wait()
        log.info("worker %s stopping", self.owner)
        worker.stop(timeout=int((STOP_GRACE_SECONDS + 20) * 1000))
        self.broker.close()
        self.store.close()
        return 0


def run_worker(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return TrainingWorker(settings).run()
