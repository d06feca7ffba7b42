"""Fine-tuning jobs in SQLite: the API reads them, the job processes write them.

Each call opens its own short-lived connection (WAL mode), so the API process and the job
processes never share one, and a killed process leaves nothing locked.

Every change a client may want to follow is also appended, in the same transaction, to the
job's event log (``job_events``): ``status`` (a new status), ``progress`` (phase, epoch,
fraction within the epoch), ``epoch`` (an epoch's metrics) and a last ``done``. Events are
numbered per job from 1, so ``GET /finetune/{id}/events`` can replay what a client missed.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""

STATUS, PROGRESS, EPOCH, DONE = "status", "progress", "epoch", "done"


@dataclass(frozen=True)
class JobEvent:
    seq: int
    type: str
    data: dict[str, Any]
    created_at: str


def _emit(db: sqlite3.Connection, job_id: str, kind: str, data: dict[str, Any], now: str) -> None:
    db.execute(
        "INSERT INTO job_events (job_id, seq, type, data, created_at) SELECT ?,"
        " COALESCE(MAX(seq), 0) + 1, ?, ?, ? FROM job_events WHERE job_id = ?",
        (job_id, kind, json.dumps(data), now, job_id),
    )


def _emit_status(db: sqlite3.Connection, job_id: str, now: str) -> None:
    """A ``status`` event with the job's current status, and ``done`` once it is final."""
    row = db.execute(
        "SELECT status, attempts, error, error_code, result FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is None:
        return
    status, attempts, error, error_code, result = row
    data: dict[str, Any] = {"status": status, "attempts": attempts}
    if error:
        data["error"] = {"code": error_code, "detail": error}
    _emit(db, job_id, STATUS, data, now)
    if status in FINAL_STATES:
        done = {**data, "result": json.loads(result) if result else None}
        _emit(db, job_id, DONE, done, now)


def _emit_epochs(
    db: sqlite3.Connection, job_id: str, history: list[dict[str, Any]], now: str
) -> None:
    """An ``epoch`` event for each epoch of ``history`` not announced yet."""
    seen = {
        json.loads(data)["epoch"]
        for (data,) in db.execute(
            "SELECT data FROM job_events WHERE job_id = ? AND type = ?", (job_id, EPOCH)
        )
    }
    for entry in sorted(history, key=lambda h: h["epoch"]):
        if entry["epoch"] not in seen:
            _emit(db, job_id, EPOCH, entry, now)


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._backfill_events(db)

    @staticmethod
    def _backfill_events(db: sqlite3.Connection) -> None:
        """Give jobs written before the event log existed the events of their state."""
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute(
            "SELECT id, history, updated_at FROM jobs WHERE id NOT IN"
            " (SELECT DISTINCT job_id FROM job_events)"
        ).fetchall()
        for job_id, history, updated_at in rows:
            _emit_epochs(db, job_id, json.loads(history or "[]"), updated_at)
            _emit_status(db, job_id, updated_at)
        db.execute("COMMIT")

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

    def active_for_model(self, model: str) -> list[str]:
        """Ids of the queued or running jobs that train ``model``."""
        marks = ", ".join("?" for _ in ACTIVE_STATES)
        with self._connect() as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE model = ? AND status IN ({marks}) ORDER BY seq",
                (model, *ACTIVE_STATES),
            ).fetchall()
        return [r[0] for r in rows]

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

    def events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        """The job's events numbered above ``after``, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT seq, type, data, created_at FROM job_events WHERE job_id = ? AND seq > ?"
                " ORDER BY seq",
                (job_id, after),
            ).fetchall()
        return [JobEvent(int(r[0]), r[1], json.loads(r[2]), r[3]) for r in rows]

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
            _emit_status(db, job_id, now)
            db.execute("COMMIT")
        job = self.get(job_id)
        assert job is not None
        return job

    def claim_next(self) -> dict[str, Any] | None:
        """Atomically move the oldest queued job to ``running`` and return it."""
        now = utc_now()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?), updated_at = ?,"
                " attempts = attempts + 1 WHERE id = (SELECT id FROM jobs WHERE status = ?"
                " ORDER BY seq LIMIT 1) RETURNING *",
                (RUNNING, now, now, QUEUED),
            ).fetchone()
            if row is not None:
                _emit_status(db, row["id"], now)
            db.execute("COMMIT")
        return self._decode(row)

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        now = fields["updated_at"] = utc_now()
        progress, history = fields.get("progress"), fields.get("history")
        for column in JSON_COLUMNS:
            if column in fields and fields[column] is not None:
                fields[column] = json.dumps(fields[column])
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))
            if history is not None:
                _emit_epochs(db, job_id, history, now)
            if progress is not None:
                _emit(db, job_id, PROGRESS, progress, now)
            if "status" in fields:
                _emit_status(db, job_id, now)
            db.execute("COMMIT")

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
            if new is not None:
                _emit_status(db, job_id, now)
            db.execute("COMMIT")
        return new

    def release(self, job_id: str) -> bool:
        """A ``running`` job whose process the service stopped on shutdown: queue it again
        without counting the attempt (it resumes from its last epoch at the next start)."""
        now = utc_now()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "UPDATE jobs SET status = ?, updated_at = ?, pid = NULL,"
                " attempts = MAX(attempts - 1, 0) WHERE id = ? AND status = ? RETURNING id",
                (QUEUED, now, job_id, RUNNING),
            ).fetchone()
            if row is not None:
                _emit_status(db, job_id, now)
            db.execute("COMMIT")
        return row is not None

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
                _emit_status(db, job_id, now)
            db.execute("COMMIT")
        return [r[0] for r in rows]


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]
