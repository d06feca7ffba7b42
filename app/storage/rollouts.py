"""Rollouts: a candidate version of a model put in front of a share of its traffic
(``canary``) or beside all of it (``shadow``), and the figures every replica gathered on it.

A rollout is a row in the service's database (`app.storage.sql`), so every replica sharing
it follows the same rollout; each replica writes its own figures (per version: requests,
errors, a latency histogram, answers compared and agreeing) every second or so, and a
reader sums them across replicas.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.errors import ConvserveError
from app.storage.objects import utc_now
from app.storage.sql import SqlStore

RUNNING = "running"
# The bounds that stop a rollout when none are given (judged after ``min_requests``).
GUARD_DEFAULTS: dict[str, Any] = {
    "max_error_rate": 0.05,
    "max_p99_ms": None,
    "min_agreement": None,
    "min_requests": 50,
}
ENDED = ("promoted", "aborted", "stopped", "replaced")

metadata = sa.MetaData()
rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),  # the candidate
    sa.Column("baseline", sa.Integer, nullable=False),  # the version active when it began
    sa.Column("mode", sa.Text, nullable=False),  # canary | shadow
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("guards", sa.Text, nullable=False),  # JSON
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("started_at", sa.Text, nullable=False),
    sa.Column("started_ts", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Text),
    sa.Index("rollouts_model", "model", "started_ts"),
)
rollout_figures = sa.Table(
    "rollout_figures",
    metadata,
    sa.Column("rollout_id", sa.Text, primary_key=True),
    sa.Column("replica", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("figures", sa.Text, nullable=False),  # JSON, see app.serving.rollout.Figures
    sa.Column("updated_at", sa.Text, nullable=False),
)


def no_rollout(model: str) -> ConvserveError:
    return ConvserveError("rollout_not_found", f"model {model!r} has no rollout running", 404)


class RolloutStore(SqlStore):
    def _setup(self, db: Connection) -> None:
        metadata.create_all(db)

    @staticmethod
    def _decode(row: Any) -> dict[str, Any]:
        rollout = dict(row._mapping)
        rollout["guards"] = json.loads(rollout["guards"])
        return rollout

    def latest(self, model: str) -> dict[str, Any] | None:
        """The model's running rollout, or the last one to end."""
        with self._read() as db:
            row = db.execute(
                sa.select(rollouts)
                .where(rollouts.c.model == model)
                .order_by(rollouts.c.started_ts.desc())
                .limit(1)
            ).one_or_none()
        return self._decode(row) if row is not None else None

    def running(self) -> dict[str, dict[str, Any]]:
        """The running rollout of each model that has one."""
        with self._read() as db:
            rows = db.execute(sa.select(rollouts).where(rollouts.c.status == RUNNING)).all()
        return {r.model: self._decode(r) for r in rows}

    def start(
        self,
        model: str,
        version: int,
        baseline: int,
        mode: str,
        share: float,
        guards: dict[str, Any],
    ) -> dict[str, Any]:
        """Begin a rollout; one still running for the model ends, ``replaced``."""
        now = utc_now()
        rollout_id = uuid.uuid4().hex[:16]
        with self._write() as db:
            db.execute(
                rollouts.update()
                .where(rollouts.c.model == model, rollouts.c.status == RUNNING)
                .values(status="replaced", reason="a new rollout began", ended_at=now)
            )
            db.execute(
                rollouts.insert().values(
                    id=rollout_id,
                    model=model,
                    version=version,
                    baseline=baseline,
                    mode=mode,
                    share=share,
                    guards=json.dumps(guards),
                    status=RUNNING,
                    started_at=now,
                    started_ts=time.time(),
                )
            )
        latest = self.latest(model)
        assert latest is not None
        return latest

    def end(self, rollout_id: str, status: str, reason: str | None = None) -> bool:
        """End a running rollout; false when it had ended already."""
        with self._write() as db:
            result = db.execute(
                rollouts.update()
                .where(rollouts.c.id == rollout_id, rollouts.c.status == RUNNING)
                .values(status=status, reason=reason, ended_at=utc_now())
            )
        return bool(result.rowcount)

    def save_figures(
        self, rollout_id: str, replica: str, figures: dict[int, dict[str, Any]]
    ) -> None:
        """This replica's figures of each version, replacing what it wrote before."""
        now = utc_now()
        with self._write() as db:
            db.execute(
                rollout_figures.delete().where(
                    rollout_figures.c.rollout_id == rollout_id,
                    rollout_figures.c.replica == replica,
                )
            )
            for version, values in figures.items():
                db.execute(
                    rollout_figures.insert().values(
                        rollout_id=rollout_id,
                        replica=replica,
                        version=version,
                        figures=json.dumps(values),
                        updated_at=now,
                    )
                )

    def figures(self, rollout_id: str) -> dict[int, list[dict[str, Any]]]:
        """Every replica's figures, per version."""
        with self._read() as db:
            rows = db.execute(
                sa.select(rollout_figures.c.version, rollout_figures.c.figures).where(
                    rollout_figures.c.rollout_id == rollout_id
                )
            ).all()
        found: dict[int, list[dict[str, Any]]] = {}
        for version, figures in rows:
            found.setdefault(int(version), []).append(json.loads(figures))
        return found

    def replicas(self, rollout_id: str) -> int:
        with self._read() as db:
            n = db.execute(
                sa.select(sa.func.count(sa.distinct(rollout_figures.c.replica))).where(
                    rollout_figures.c.rollout_id == rollout_id
                )
            ).scalar_one()
        return int(n)

    def delete_model(self, model: str) -> None:
        with self._write() as db:
            ids = [
                r[0] for r in db.execute(sa.select(rollouts.c.id).where(rollouts.c.model == model))
            ]
            if ids:
                db.execute(rollout_figures.delete().where(rollout_figures.c.rollout_id.in_(ids)))
                db.execute(rollouts.delete().where(rollouts.c.id.in_(ids)))
