"""Fine-tuning jobs in SQLite: the API reads them, the job processes write them.

Each call opens its own short-lived connection (WAL mode), so the API process and the job
processes never share one, and a killed process leaves nothing locked.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.registry import utc_now

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
ACTIVE_STATES = (QUEUED, RUNNING, CANCELLING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
JSON_COLUMNS = ("params", "progress", "history", "skipped", "result", "dataset")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    promote INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    updated_at TEXT NOT NULL,
    progress TEXT,
    history TEXT NOT NULL DEFAULT '[]',
    skipped TEXT NOT NULL DEFAULT '[]',
    dataset TEXT,
    result TEXT,
    error TEXT,
    error_code TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @staticmethod
    def _decode(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row)
        for column in JSON_COLUMNS:
            if job.get(column) is not None:
                job[column] = json.loads(job[column])
        job["promote"] = bool(job["promote"])
        return job

    # -- reads -----------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            return self._decode(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [j for j in map(self._decode, rows) if j is not None]

    def count(self, status: str) -> int:
        with self._connect() as db:
            (n,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()
        return int(n)

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: int(n) for status, n in rows}

    def status(self, job_id: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    # -- writes ----------------------------------------------------------------------------

    def create(
        self,
        model: str,
        params: dict[str, Any],
        promote: bool,
        skipped: list[dict[str, Any]],
        dataset: dict[str, Any],
        job_id: str | None = None,
    ) -> dict[str, Any]:
        job_id = job_id or new_job_id()
        now = utc_now()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()
            db.execute(
                "INSERT INTO jobs (id, model, status, params, promote, created_at, updated_at,"
                " skipped, dataset, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    model,
                    QUEUED,
                    json.dumps(params),
                    int(promote),
                    now,
                    now,
                    json.dumps(skipped),
                    json.dumps(dataset),
                    seq,
                ),
            )
            db.execute("COMMIT")
        job = self.get(job_id)
        assert job is not None
        return job

    def claim_next(self) -> dict[str, Any] | None:
        """Atomically move the oldest queued job to ``running`` and return it."""
        now = utc_now()
        with self._connect() as db:
            row = db.execute(
                "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?), updated_at = ?,"
                " attempts = attempts + 1 WHERE id = (SELECT id FROM jobs WHERE status = ?"
                " ORDER BY seq LIMIT 1) RETURNING *",
                (RUNNING, now, now, QUEUED),
            ).fetchone()
        return self._decode(row)

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        fields["updated_at"] = utc_now()
        for column in JSON_COLUMNS:
            if column in fields and fields[column] is not None:
                fields[column] = json.dumps(fields[column])
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))

    def finish(self, job_id: str, status: str, **fields: Any) -> None:
        self.update(job_id, status=status, finished_at=utc_now(), pid=None, **fields)

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, mark a running one ``cancelling``; returns the new
        status, or None when the job was already finished."""
        now = utc_now()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            new: str | None = None
            if row is not None and row[0] == QUEUED:
                new = CANCELLED
                db.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                    (CANCELLED, now, now, job_id),
                )
            elif row is not None and row[0] in (RUNNING, CANCELLING):
                new = CANCELLING
                db.execute(
                    "UPDATE jobs SET status = ?, updated_at = ? WHERE id = ?",
                    (CANCELLING, now, job_id),
                )
            db.execute("COMMIT")
        return new

    def requeue_orphans(self, max_attempts: int) -> list[str]:
        """Jobs left ``running`` by a process that died: queue them again (they resume
        from their last completed epoch), or fail them after ``max_attempts``; a job that
        was being cancelled ends ``cancelled``."""
        now = utc_now()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT id, status, attempts FROM jobs WHERE status IN (?, ?)",
                (RUNNING, CANCELLING),
            ).fetchall()
            for job_id, status, attempts in rows:
                if status == CANCELLING:
                    db.execute(
                        "UPDATE jobs SET status = ?, finished_at = ?, updated_at = ?, pid = NULL"
                        " WHERE id = ?",
                        (CANCELLED, now, now, job_id),
                    )
                elif attempts >= max_attempts:
                    db.execute(
                        "UPDATE jobs SET status = ?, finished_at = ?, updated_at = ?, pid = NULL,"
                        " error = ?, error_code = ? WHERE id = ?",
                        (
                            FAILED,
                            now,
                            now,
                            f"the job was interrupted {attempts} times",
                            "interrupted",
                            job_id,
                        ),
                    )
                else:
                    db.execute(
                        "UPDATE jobs SET status = ?, updated_at = ?, pid = NULL WHERE id = ?",
                        (QUEUED, now, job_id),
                    )
            db.execute("COMMIT")
        return [r[0] for r in rows]


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]
