"""One job lifecycle for the supervisor and the workers (`app.jobs.lifecycle`): what
becomes of a job when its training process ends, on a real job store."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.jobs.lifecycle import Next, promotion_result, settle, succeed
from app.jobs.runner import EXIT_STOPPED, job_dir
from app.jobs.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

OWNER = "api@test:1"


@pytest.fixture
def settings(tmp_path):
    return Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "var", max_job_attempts=2)


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


def _running(store, settings, owner=OWNER) -> str:
    job = store.create("m", {}, True, [], {"class_names": ["a", "b"]})
    claimed = store.claim(job["id"], owner, 60, settings.max_job_attempts)
    assert claimed is not None and claimed["status"] == RUNNING
    job_dir(settings, job["id"]).mkdir(parents=True)
    return job["id"]


def _settle(store, settings, job_id, code, stopping=False):
    return settle(store, settings, job_id, code, owner=OWNER, stopping=stopping)[0]


def test_a_crash_queues_the_job_again_until_it_is_out_of_attempts(store, settings):
    job_id = _running(store, settings)
    assert _settle(store, settings, job_id, -9) is Next.REQUEUED
    assert store.status(job_id) == QUEUED
    store.claim(job_id, OWNER, 60, settings.max_job_attempts)
    assert _settle(store, settings, job_id, -9) is Next.NOTHING
    job = store.get(job_id)
    assert (job["status"], job["error_code"]) == (FAILED, "worker_crashed")
    assert "exit code -9" in job["error"]
    assert not job_dir(settings, job_id).exists()  # a finished job's files go


def test_stopped_with_its_owner_is_left_for_the_owner_and_not_counted(store, settings):
    job_id = _running(store, settings)
    assert _settle(store, settings, job_id, EXIT_STOPPED, stopping=True) is Next.LEFT
    assert store.status(job_id) == RUNNING  # the owner queues it again as it stops
    assert job_dir(settings, job_id).exists()  # its checkpoints stay for the resume


def test_stopped_by_someone_else_is_queued_again_without_an_attempt(store, settings):
    job_id = _running(store, settings)
    attempts = store.get(job_id)["attempts"]
    assert _settle(store, settings, job_id, EXIT_STOPPED) is Next.REQUEUED
    job = store.get(job_id)
    assert job["status"] == QUEUED
    # The stop did not count: claimed again, it is still on the same attempt.
    assert store.claim(job_id, OWNER, 60, settings.max_job_attempts)["attempts"] == attempts


def test_a_job_killed_while_cancelling_ends_cancelled(store, settings):
    job_id = _running(store, settings)
    store.request_cancel(job_id)
    assert _settle(store, settings, job_id, -9) is Next.NOTHING
    assert store.status(job_id) == CANCELLED
    assert not job_dir(settings, job_id).exists()


def test_a_job_taken_over_by_another_owner_is_not_touched(store, settings):
    job_id = _running(store, settings, owner="worker@elsewhere:2")
    assert _settle(store, settings, job_id, -9) is Next.NOTHING
    assert store.status(job_id) == RUNNING


def test_a_written_version_is_promoted_then_succeeds(store, settings):
    job_id = _running(store, settings)
    store.update(job_id, result={"version": 3, "metrics": {"accuracy": 0.9}})
    step, job = settle(store, settings, job_id, 0, owner=OWNER, stopping=False)
    assert step is Next.PROMOTE
    result = promotion_result(job, previous_version=2)
    assert (result["previous_version"], result["promoted"]) == (2, False)
    result["promoted"] = True
    succeed(store, settings, job, result)
    done = store.get(job_id)
    assert (done["status"], done["result"]["promoted"]) == (SUCCEEDED, True)
    assert not job_dir(settings, job_id).exists()


def test_an_unknown_job_needs_nothing(store, settings):
    assert _settle(store, settings, "no-such-job", 0) is Next.NOTHING
