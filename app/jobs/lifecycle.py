"""What happens to a job when its training process ends: one lifecycle, used by the
in-service supervisor (`app.jobs.supervisor`) and the broker's training workers
(`app.jobs.worker`).

`settle` reads the job and decides: queue it again (stopped, or crashed with attempts
left), end it (cancelled, failed), or promote the version it wrote. Promotion is the one
step that differs: the supervisor loads and switches the version in its own process, a
worker moves the registry's pointer for the replicas to follow; both then record the
outcome with `succeed`.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

from app.config import Settings
from app.jobs.runner import EXIT_STOPPED, remove_job_files
from app.jobs.store import CANCELLED, CANCELLING, FINAL_STATES, QUEUED, RUNNING, SUCCEEDED, JobStore
from app.storage.rollouts import GUARD_DEFAULTS, RolloutStore

log = logging.getLogger("convserve.jobs")

# A job that does not stop this long after it was cancelled is killed.
CANCEL_GRACE_SECONDS = 8.0
# On shutdown a job process gets SIGTERM, which it turns into a clean stop at its next step
# (app.jobs.runner); after this long it is killed (its checkpoints survive that too).
STOP_GRACE_SECONDS = 10.0


class Next(Enum):
    """What the job's owner does after `settle`."""

    NOTHING = "nothing"  # the job ended, or is not this owner's any more
    REQUEUED = "requeued"  # queued again: hand it out again (a worker sends it to the queue)
    LEFT = "left"  # stopped with its owner: the owner queues it again as it stops
    PROMOTE = "promote"  # the version is written: promote it, then `succeed`


def settle(
    store: JobStore,
    settings: Settings,
    job_id: str,
    returncode: int | None,
    *,
    owner: str,
    stopping: bool,
) -> tuple[Next, dict[str, Any] | None]:
    """Record the outcome of a job whose process ended with ``returncode``; returns what
    the owner does next, and the job."""
    job = store.get(job_id)
    if job is None:
        return Next.NOTHING, None
    status = job["status"]
    if status in (RUNNING, CANCELLING) and job.get("owner") not in (None, owner):
        return Next.NOTHING, job  # another process took the job over (its lease ran out)
    if status == RUNNING and stopping:
        return Next.LEFT, job  # stopped with its owner, not failed
    if status == RUNNING and returncode == EXIT_STOPPED:
        # Stopped by a SIGTERM that was not the owner's (sent to the whole process group):
        # queued again, not counted as a failed attempt.
        return (Next.REQUEUED if store.release(job_id) else Next.NOTHING), job
    if status == CANCELLING:  # killed after ignoring its cancellation
        store.finish(job_id, CANCELLED)
    elif status == RUNNING and job.get("result"):
        return Next.PROMOTE, job
    elif status == RUNNING:
        # The process died without a word: queue the job again (it resumes from its last
        # completed epoch), up to the attempt limit.
        new = store.retry_or_fail(
            job_id,
            settings.max_job_attempts,
            f"the training process ended unexpectedly (exit code {returncode})",
            "worker_crashed",
        )
        if new == QUEUED:
            log.warning("job %s: process ended with %s; queued again", job_id, returncode)
            return Next.REQUEUED, job
    if store.status(job_id) in FINAL_STATES:
        remove_job_files(settings, job_id)
    return Next.NOTHING, job


def promotion_result(job: dict[str, Any], previous_version: int | None) -> dict[str, Any]:
    """The job's result before promotion: what the new version is compared with (the
    console's side-by-side view), and not promoted yet."""
    result = dict(job["result"])
    if previous_version is not None and previous_version != int(result["version"]):
        result["previous_version"] = previous_version
    result["promoted"] = False
    return result


def succeed(
    store: JobStore, settings: Settings, job: dict[str, Any], result: dict[str, Any]
) -> None:
    """Mark a promoted (or kept back) job succeeded and remove its files."""
    store.finish(job["id"], SUCCEEDED, result=result)
    remove_job_files(settings, job["id"])
    log.info("job %s succeeded: %s version %s", job["id"], job["model"], result["version"])


def start_rollout(
    rollouts: RolloutStore, job: dict[str, Any], baseline: int | None, result: dict[str, Any]
) -> bool:
    """Begin the rollout a job asked for (``promote=canary|shadow``) of its new version
    against ``baseline``, with the default guards, and say so in ``result``; false when
    there is nothing to roll out against (a new model: its version is promoted)."""
    if baseline is None:
        return False
    spec, version = job["rollout"], int(result["version"])
    row = rollouts.start(
        job["model"], version, baseline, spec["mode"], float(spec["share"]), dict(GUARD_DEFAULTS)
    )
    result["rollout"] = {"id": row["id"], "mode": row["mode"], "share": row["share"]}
    return True
