"""Fine-tuning jobs in the service's SQL database (`app.storage.sql`: SQLite, or PostgreSQL
shared by replicas and workers): the API reads them, job processes and workers write them.
Writes are serialized, so a claim, a cancel and an event number are never raced.

Every change a client may want to follow is also appended, in the same transaction, to the
job's event log (``job_events``): ``status`` (a new status), ``progress`` (phase, epoch,
fraction within the epoch), ``epoch`` (an epoch's metrics) and a last ``done``. Events are
numbered per job from 1, so ``GET /finetune/{id}/events`` can replay what a client missed.

A running job has an ``owner`` (the supervisor or worker running it) and a lease
(``lease_expires_at``, seconds since the epoch) that the owner renews while it trains. A job
whose lease ran out lost its owner (process killed, host lost): `expire_leases` queues it
again, to resume from its last completed epoch, or fails it after too many attempts.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.objects import utc_now
from app.storage.sql import SqlStore

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
ACTIVE_STATES = (QUEUED, RUNNING, CANCELLING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
JSON_COLUMNS = ("params", "progress", "history", "skipped", "result", "dataset", "rollout")

metadata = sa.MetaData()
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("promote", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("started_at", sa.Text),
    sa.Column("finished_at", sa.Text),
    sa.Column("updated_at", sa.Text, nullable=False),
    sa.Column("progress", sa.Text),
    sa.Column("history", sa.Text, nullable=False, server_default="[]"),
    sa.Column("skipped", sa.Text, nullable=False, server_default="[]"),
    sa.Column("dataset", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("error_code", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pid", sa.Integer),
    sa.Column("seq", sa.Integer, nullable=False),
    # Added with leases; a store written before them gains the columns at open (`_migrate`).
    sa.Column("owner", sa.Text),
    sa.Column("lease_expires_at", sa.Float),
    # A job that rolls its version out instead of promoting it: {"mode", "share"}.
    sa.Column("rollout", sa.Text),
    sa.Index("jobs_status", "status", "seq"),
)
job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
)
# Columns added after the first release, with their SQL type, for stores that predate them.
ADDED_COLUMNS = {"owner": "TEXT", "lease_expires_at": "DOUBLE PRECISION", "rollout": "TEXT"}

STATUS, PROGRESS, EPOCH, DONE = "status", "progress", "epoch", "done"


@dataclass(frozen=True)
class JobEvent:
    seq: int
    type: str
    data: dict[str, Any]
    created_at: str


def _emit(db: Connection, job_id: str, kind: str, data: dict[str, Any], now: str) -> None:
    (last,) = db.execute(
        sa.select(sa.func.coalesce(sa.func.max(job_events.c.seq), 0)).where(
            job_events.c.job_id == job_id
        )
    ).one()
    db.execute(
        job_events.insert().values(
            job_id=job_id, seq=int(last) + 1, type=kind, data=json.dumps(data), created_at=now
        )
    )


def _emit_status(db: Connection, job_id: str, now: str) -> None:
    """A ``status`` event with the job's current status, and ``done`` once it is final."""
    row = db.execute(
        sa.select(
            jobs.c.status, jobs.c.attempts, jobs.c.error, jobs.c.error_code, jobs.c.result
        ).where(jobs.c.id == job_id)
    ).one_or_none()
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


def _emit_epochs(db: Connection, job_id: str, history: list[dict[str, Any]], now: str) -> None:
    """An ``epoch`` event for each epoch of ``history`` not announced yet."""
    seen = {
        json.loads(data)["epoch"]
        for (data,) in db.execute(
            sa.select(job_events.c.data).where(
                job_events.c.job_id == job_id, job_events.c.type == EPOCH
            )
        )
    }
    for entry in sorted(history, key=lambda h: h["epoch"]):
        if entry["epoch"] not in seen:
            _emit(db, job_id, EPOCH, entry, now)


class JobStore(SqlStore):
    """Jobs and their events, in the service's database (`app.storage.sql`)."""

    def _setup(self, db: Connection) -> None:
        metadata.create_all(db)
        self._migrate(db)
        self._backfill_events(db)

    @staticmethod
    def _migrate(db: Connection) -> None:
        """Add the columns a store written by an earlier release lacks."""
        present = {c["name"] for c in sa.inspect(db).get_columns("jobs")}
        for name, sql_type in ADDED_COLUMNS.items():
            if name not in present:
                db.exec_driver_sql(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type}")

    @staticmethod
    def _backfill_events(db: Connection) -> None:
        """Give jobs written before the event log existed the events of their state."""
        logged = sa.select(job_events.c.job_id).distinct()
        rows = db.execute(
            sa.select(jobs.c.id, jobs.c.history, jobs.c.updated_at).where(jobs.c.id.not_in(logged))
        ).all()
        for job_id, history, updated_at in rows:
            _emit_epochs(db, job_id, json.loads(history or "[]"), updated_at)
            _emit_status(db, job_id, updated_at)

    @staticmethod
    def _decode(row: sa.Row[Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row._mapping)
        for column in JSON_COLUMNS:
            if job.get(column) is not None:
                job[column] = json.loads(job[column])
        job["promote"] = bool(job["promote"])
        return job

    # -- reads -----------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._read() as db:
            return self._decode(
                db.execute(sa.select(jobs).where(jobs.c.id == job_id)).one_or_none()
            )

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._read() as db:
            rows = db.execute(sa.select(jobs).order_by(jobs.c.seq.desc()).limit(limit)).all()
        return [j for j in map(self._decode, rows) if j is not None]

    def active_for_model(self, model: str) -> list[str]:
        """Ids of the queued or running jobs that train ``model``."""
        with self._read() as db:
            rows = db.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.model == model, jobs.c.status.in_(ACTIVE_STATES))
                .order_by(jobs.c.seq)
            ).all()
        return [r[0] for r in rows]

    def active_for_dataset(self, name: str) -> list[dict[str, Any]]:
        """The queued or running jobs that read stored dataset ``name`` (id and version)."""
        with self._read() as db:
            rows = db.execute(
                sa.select(jobs.c.id, jobs.c.dataset)
                .where(jobs.c.status.in_(ACTIVE_STATES))
                .order_by(jobs.c.seq)
            ).all()
        found = []
        for job_id, text in rows:
            dataset = json.loads(text) if text else {}
            if isinstance(dataset, dict) and dataset.get("name") == name:
                found.append({"id": job_id, "version": dataset.get("version")})
        return found

    def count(self, status: str) -> int:
        with self._read() as db:
            n = db.execute(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == status)
            ).scalar_one()
        return int(n)

    def counts(self) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute(
                sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
            ).all()
        return {status: int(n) for status, n in rows}

    def status(self, job_id: str) -> str | None:
        with self._read() as db:
            value = db.execute(
                sa.select(jobs.c.status).where(jobs.c.id == job_id)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        """The job's events numbered above ``after``, oldest first."""
        with self._read() as db:
            rows = db.execute(
                sa.select(
                    job_events.c.seq, job_events.c.type, job_events.c.data, job_events.c.created_at
                )
                .where(job_events.c.job_id == job_id, job_events.c.seq > after)
                .order_by(job_events.c.seq)
            ).all()
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
        rollout: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        job_id = job_id or new_job_id()
        now = utc_now()
        with self._write() as db:
            seq = db.execute(sa.select(sa.func.coalesce(sa.func.max(jobs.c.seq), 0) + 1)).scalar()
            db.execute(
                jobs.insert().values(
                    id=job_id,
                    model=model,
                    status=QUEUED,
                    params=json.dumps(params),
                    promote=int(promote),
                    created_at=now,
                    updated_at=now,
                    skipped=json.dumps(skipped),
                    dataset=json.dumps(dataset),
                    rollout=json.dumps(rollout) if rollout else None,
                    seq=seq,
                )
            )
            _emit_status(db, job_id, now)
        job = self.get(job_id)
        assert job is not None
        return job

    def claim_next(
        self, owner: str | None = None, lease_seconds: float = 0
    ) -> dict[str, Any] | None:
        """Atomically move the oldest queued job to ``running`` and return it; with an
        ``owner``, holding a lease of ``lease_seconds``."""
        with self._write() as db:
            job_id = db.execute(
                sa.select(jobs.c.id).where(jobs.c.status == QUEUED).order_by(jobs.c.seq).limit(1)
            ).scalar_one_or_none()
            if job_id is None:
                return None
            return self._start(db, job_id, owner, lease_seconds)

    def claim(
        self, job_id: str, owner: str, lease_seconds: float, max_attempts: int
    ) -> dict[str, Any] | None:
        """Start ``job_id`` for ``owner`` with a lease, when it is queued, or running under
        a lease that ran out (its owner died: the attempt counts). Returns the job, or None
        when it is someone else's (a live lease), finished, or unknown. A job out of
        attempts ends ``failed``; a dead owner's ``cancelling`` job ends ``cancelled``."""
        with self._write() as db:
            row = db.execute(
                sa.select(jobs.c.status, jobs.c.lease_expires_at, jobs.c.attempts).where(
                    jobs.c.id == job_id
                )
            ).one_or_none()
            if row is None:
                return None
            status, expires, attempts = row
            if status in (RUNNING, CANCELLING):
                if expires is None or expires > time.time():
                    return None
                if self._end_orphan(db, job_id, status, attempts, max_attempts):
                    return None
            elif status != QUEUED:
                return None
            return self._start(db, job_id, owner, lease_seconds)

    def _start(
        self, db: Connection, job_id: str, owner: str | None, lease_seconds: float
    ) -> dict[str, Any] | None:
        now = utc_now()
        row = db.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(
                status=RUNNING,
                started_at=sa.func.coalesce(jobs.c.started_at, now),
                updated_at=now,
                attempts=jobs.c.attempts + 1,
                owner=owner,
                lease_expires_at=time.time() + lease_seconds if owner else None,
            )
            .returning(*jobs.c)
        ).one()
        _emit_status(db, job_id, now)
        return self._decode(row)

    def renew(self, job_ids: Sequence[str], owner: str, lease_seconds: float) -> list[str]:
        """Extend ``owner``'s leases on ``job_ids``; returns the ids it still holds (a job
        missing from the answer was taken over or finished: its owner must stop it)."""
        if not job_ids:
            return []
        with self._write() as db:
            rows = db.execute(
                jobs.update()
                .where(
                    jobs.c.id.in_(list(job_ids)),
                    jobs.c.owner == owner,
                    jobs.c.status.in_((RUNNING, CANCELLING)),
                )
                .values(lease_expires_at=time.time() + lease_seconds)
                .returning(jobs.c.id)
            ).all()
        return [r[0] for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        now = fields["updated_at"] = utc_now()
        progress, history = fields.get("progress"), fields.get("history")
        for column in JSON_COLUMNS:
            if column in fields and fields[column] is not None:
                fields[column] = json.dumps(fields[column])
        with self._write() as db:
            db.execute(jobs.update().where(jobs.c.id == job_id).values(**fields))
            if history is not None:
                _emit_epochs(db, job_id, history, now)
            if progress is not None:
                _emit(db, job_id, PROGRESS, progress, now)
            if "status" in fields:
                _emit_status(db, job_id, now)

    def finish(self, job_id: str, status: str, **fields: Any) -> None:
        self.update(
            job_id,
            status=status,
            finished_at=utc_now(),
            pid=None,
            owner=None,
            lease_expires_at=None,
            **fields,
        )

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, mark a running one ``cancelling``; returns the new
        status, or None when the job was already finished."""
        now = utc_now()
        with self._write() as db:
            status = db.execute(
                sa.select(jobs.c.status).where(jobs.c.id == job_id)
            ).scalar_one_or_none()
            new: str | None = None
            if status == QUEUED:
                new = CANCELLED
                db.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id)
                    .values(status=CANCELLED, finished_at=now, updated_at=now)
                )
            elif status in (RUNNING, CANCELLING):
                new = CANCELLING
                db.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id)
                    .values(status=CANCELLING, updated_at=now)
                )
            if new is not None:
                _emit_status(db, job_id, now)
        return new

    def release(self, job_id: str) -> bool:
        """A ``running`` job whose process the service stopped on shutdown: queue it again
        without counting the attempt (it resumes from its last epoch at the next start)."""
        now = utc_now()
        with self._write() as db:
            row = db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == RUNNING)
                .values(
                    status=QUEUED,
                    updated_at=now,
                    pid=None,
                    owner=None,
                    lease_expires_at=None,
                    attempts=sa.case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
                )
                .returning(jobs.c.id)
            ).one_or_none()
            if row is not None:
                _emit_status(db, job_id, now)
        return row is not None

    def retry_or_fail(
        self, job_id: str, max_attempts: int, error: str, error_code: str
    ) -> str | None:
        """A running job whose process ended without a result: queue it again (it resumes
        from its last completed epoch), or fail it with ``error`` once it has used
        ``max_attempts``. Returns the new status (None: the job was no longer running)."""
        now = utc_now()
        with self._write() as db:
            attempts = db.execute(
                sa.select(jobs.c.attempts).where(jobs.c.id == job_id, jobs.c.status == RUNNING)
            ).scalar_one_or_none()
            if attempts is None:
                return None
            values: dict[str, Any] = {
                "updated_at": now, "pid": None, "owner": None, "lease_expires_at": None,
            }  # fmt: skip
            if attempts >= max_attempts:
                values.update(status=FAILED, finished_at=now, error=error, error_code=error_code)
            else:
                values["status"] = QUEUED
            db.execute(jobs.update().where(jobs.c.id == job_id).values(**values))
            _emit_status(db, job_id, now)
        return str(values["status"])

    def requeue_orphans(self, max_attempts: int, owner: str | None = None) -> list[str]:
        """Jobs left ``running`` by a process that died: queue them again (they resume
        from their last completed epoch), or fail them after ``max_attempts``; a job that
        was being cancelled ends ``cancelled``.

        Without ``owner``, every running job is taken for an orphan (one service owns the
        store). With one, only that owner's jobs (it restarted) and jobs whose lease ran
        out: a job another live process holds is left alone."""
        with self._write() as db:
            query = sa.select(jobs.c.id, jobs.c.status, jobs.c.attempts).where(
                jobs.c.status.in_((RUNNING, CANCELLING))
            )
            if owner is not None:
                query = query.where(
                    sa.or_(
                        jobs.c.owner == owner,
                        jobs.c.owner.is_(None),
                        jobs.c.lease_expires_at.is_(None),
                        jobs.c.lease_expires_at < time.time(),
                    )
                )
            rows = db.execute(query.order_by(jobs.c.seq)).all()
            self._requeue(db, rows, max_attempts)
        return [r[0] for r in rows]

    def expire_leases(self, max_attempts: int) -> list[str]:
        """Jobs whose owner stopped renewing its lease: queued again or ended (as
        `requeue_orphans`). Returns their ids."""
        with self._write() as db:
            rows = db.execute(
                sa.select(jobs.c.id, jobs.c.status, jobs.c.attempts)
                .where(
                    jobs.c.status.in_((RUNNING, CANCELLING)),
                    jobs.c.lease_expires_at < time.time(),
                )
                .order_by(jobs.c.seq)
            ).all()
            self._requeue(db, rows, max_attempts)
        return [r[0] for r in rows]

    @classmethod
    def _requeue(cls, db: Connection, rows: Sequence[Any], max_attempts: int) -> None:
        """Queue orphaned jobs (``id, status, attempts`` rows) again, or end them."""
        for job_id, status, attempts in rows:
            if cls._end_orphan(db, job_id, status, attempts, max_attempts):
                continue
            now = utc_now()
            db.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(status=QUEUED, updated_at=now, pid=None, owner=None, lease_expires_at=None)
            )
            _emit_status(db, job_id, now)

    @staticmethod
    def _end_orphan(
        db: Connection, job_id: str, status: str, attempts: int, max_attempts: int
    ) -> bool:
        """End an orphaned job that must not run again: ``cancelled`` when it was being
        cancelled, ``failed`` when out of attempts. Returns whether it ended."""
        now = utc_now()
        values: dict[str, Any] = {
            "finished_at": now, "updated_at": now, "pid": None, "owner": None,
            "lease_expires_at": None,
        }  # fmt: skip
        if status == CANCELLING:
            values["status"] = CANCELLED
        elif attempts >= max_attempts:
            values.update(
                status=FAILED,
                error=f"the job was interrupted {attempts} times",
                error_code="interrupted",
            )
        else:
            return False
        db.execute(jobs.update().where(jobs.c.id == job_id).values(**values))
        _emit_status(db, job_id, now)
        return True


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]
