"""The job store on both of its databases: SQLite (the default) and PostgreSQL (a real
server on loopback, `postgres_url`). The same tests run on each."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.jobs.store import (
    CANCELLED,
    CANCELLING,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobStore,
)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        target: str | Path = tmp_path / "jobs.sqlite"
    else:
        target = request.getfixturevalue("empty_postgres")
    opened = JobStore(target)
    yield opened
    opened.close()


def _job(store: JobStore, model: str = "toy") -> str:
    return store.create(model, {"epochs": 2}, True, [], {"class_names": ["a", "b"]})["id"]


def test_a_job_goes_from_queued_to_succeeded_with_its_events_in_order(store: JobStore) -> None:
    first, second = _job(store), _job(store)
    assert store.status(first) == QUEUED and store.count(QUEUED) == 2
    claimed = store.claim_next()
    assert claimed is not None and claimed["id"] == first and claimed["attempts"] == 1
    store.update(first, progress={"phase": "head", "epoch": 0, "fraction": 0.5})
    store.update(first, history=[{"epoch": 1, "loss": 0.7}])
    store.update(first, history=[{"epoch": 1, "loss": 0.7}, {"epoch": 2, "loss": 0.4}])
    store.finish(first, SUCCEEDED, result={"version": 2})
    events = store.events(first)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events] == ["status", "status", "progress", "epoch", "epoch",
                                        "status", "done"]  # fmt: skip
    assert events[-1].data["result"] == {"version": 2}
    assert [e.type for e in store.events(first, after=5)] == ["status", "done"]
    job = store.get(first)
    assert job is not None and job["status"] == SUCCEEDED and job["promote"] is True
    assert job["history"][-1]["loss"] == 0.4 and job["owner"] is None
    assert store.counts() == {SUCCEEDED: 1, QUEUED: 1}
    assert store.active_for_model("toy") == [second]
    assert [j["id"] for j in store.recent()] == [second, first]


def test_a_live_lease_keeps_a_job_with_its_owner(store: JobStore) -> None:
    job_id = _job(store)
    assert store.claim(job_id, "worker-1", 30, max_attempts=3) is not None
    # A second delivery of the message, or a second worker: nothing happens.
    assert store.claim(job_id, "worker-2", 30, max_attempts=3) is None
    assert store.claim(job_id, "worker-1", 30, max_attempts=3) is None
    assert store.renew([job_id], "worker-1", 30) == [job_id]
    assert store.renew([job_id], "worker-2", 30) == []
    assert store.expire_leases(max_attempts=3) == []
    assert store.requeue_orphans(3, owner="worker-2") == []
    job = store.get(job_id)
    assert job is not None and job["status"] == RUNNING and job["owner"] == "worker-1"
    assert job["attempts"] == 1


def test_an_expired_lease_lets_another_worker_take_the_job(store: JobStore) -> None:
    job_id = _job(store)
    store.claim(job_id, "worker-1", 0.05, max_attempts=3)
    time.sleep(0.1)
    taken = store.claim(job_id, "worker-2", 30, max_attempts=3)
    assert taken is not None and taken["owner"] == "worker-2" and taken["attempts"] == 2
    assert store.renew([job_id], "worker-1", 30) == []  # the first owner learns it lost it
    assert store.renew([job_id], "worker-2", 30) == [job_id]


def test_expired_leases_requeue_until_the_attempts_run_out(store: JobStore) -> None:
    job_id = _job(store)
    for attempt in (1, 2):
        assert store.claim(job_id, f"worker-{attempt}", 0.01, max_attempts=2) is not None
        time.sleep(0.05)
        assert store.expire_leases(max_attempts=2) == [job_id]
        expected = QUEUED if attempt == 1 else FAILED
        assert store.status(job_id) == expected
    job = store.get(job_id)
    assert job is not None and job["error_code"] == "interrupted"
    assert "2 times" in job["error"] and job["finished_at"]
    assert store.events(job_id)[-1].type == "done"


def test_a_dead_owner_s_cancelling_job_ends_cancelled(store: JobStore) -> None:
    job_id = _job(store)
    store.claim(job_id, "worker-1", 0.01, max_attempts=3)
    assert store.request_cancel(job_id) == CANCELLING
    time.sleep(0.05)
    assert store.claim(job_id, "worker-2", 30, max_attempts=3) is None
    assert store.status(job_id) == CANCELLED


def test_a_restarting_owner_requeues_its_own_jobs_but_not_others(store: JobStore) -> None:
    mine, theirs = _job(store), _job(store)
    store.claim(mine, "api-1", 30, max_attempts=3)
    store.claim(theirs, "worker-9", 30, max_attempts=3)
    assert store.requeue_orphans(3, owner="api-1") == [mine]
    assert store.status(mine) == QUEUED and store.status(theirs) == RUNNING
    # Without an owner (one service owns the store) every running job is an orphan.
    assert store.requeue_orphans(3) == [theirs]


def test_only_one_of_many_concurrent_claims_wins(store: JobStore) -> None:
    job_id = _job(store)
    winners: list[str] = []
    barrier = threading.Barrier(6)

    def claim(owner: str) -> None:
        barrier.wait()
        if store.claim(job_id, owner, 30, max_attempts=3) is not None:
            winners.append(owner)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    job = store.get(job_id)
    assert job is not None and job["owner"] == winners[0] and job["attempts"] == 1


def test_concurrent_writers_number_events_without_gaps(store: JobStore) -> None:
    job_id = _job(store)
    store.claim_next()

    def report(worker: int) -> None:
        for step in range(10):
            store.update(job_id, progress={"worker": worker, "step": step})

    threads = [threading.Thread(target=report, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [e.seq for e in store.events(job_id)]
    assert seqs == list(range(1, 2 + 40 + 1))


def test_cancel_a_queued_job_at_once_and_a_finished_one_not_at_all(store: JobStore) -> None:
    job_id = _job(store)
    assert store.request_cancel(job_id) == CANCELLED
    assert store.request_cancel(job_id) is None
    assert store.claim(job_id, "w", 30, max_attempts=3) is None
    assert store.request_cancel("no-such-job") is None


def test_a_store_written_before_leases_opens_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            """CREATE TABLE jobs (id TEXT PRIMARY KEY, model TEXT NOT NULL,
            status TEXT NOT NULL, params TEXT NOT NULL, promote INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,
            updated_at TEXT NOT NULL, progress TEXT, history TEXT NOT NULL DEFAULT '[]',
            skipped TEXT NOT NULL DEFAULT '[]', dataset TEXT, result TEXT, error TEXT,
            error_code TEXT, attempts INTEGER NOT NULL DEFAULT 0, pid INTEGER,
            seq INTEGER NOT NULL);
            INSERT INTO jobs (id, model, status, params, created_at, updated_at, attempts, seq)
            VALUES ('old', 'toy', 'running', '{}', 't', 't', 1, 1);"""
        )
    store = JobStore(path)
    job = store.get("old")
    assert job is not None and job["owner"] is None and job["lease_expires_at"] is None
    assert [e.type for e in store.events("old")] == ["status"]
    assert store.requeue_orphans(3) == ["old"] and store.status("old") == QUEUED
