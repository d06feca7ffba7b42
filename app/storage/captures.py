"""Captured predictions: images a model was asked about, kept for review.

Per model, an admin sets a capture rule (`CaptureRule`): keep an image whose top score is
under ``below_score``, or a random ``sample_rate`` share of images, or both; at most
``max_per_hour`` an hour and ``max_images`` in all, each for ``expire_after_days`` if set.
Each kept image is a row in the service's database (`app.storage.sql`: the model, the
version, the answer, the time, the file name; never who asked) and its bytes an object
under ``<model>/<id>`` of the registry's storage (``.captures/``), so every replica sees
the same queue.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.errors import ConvserveError
from app.storage.objects import ObjectMissing, ObjectStore, utc_now
from app.storage.sql import SqlStore

metadata = sa.MetaData()
capture_rules = sa.Table(
    "capture_rules",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
)
captures = sa.Table(
    "captures",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("label", sa.Text, nullable=False),  # the top class
    sa.Column("score", sa.Float, nullable=False),  # its score
    sa.Column("unknown", sa.Integer, nullable=False),
    sa.Column("top", sa.Text, nullable=False),  # JSON: [{"label", "score"}, ...]
    sa.Column("reason", sa.Text, nullable=False),  # below_score | sampled
    sa.Column("filename", sa.Text),
    sa.Column("media_type", sa.Text, nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("created_ts", sa.Float, nullable=False),  # seconds since the epoch
    sa.Column("expires_ts", sa.Float),
    sa.Index("captures_model_time", "model", "created_ts"),
)
ORDERS = ("newest", "least_confident", "class")


class CaptureError(ConvserveError):
    pass


@dataclass(frozen=True)
class CaptureRule:
    """What a model keeps. ``below_score`` None: no threshold; ``sample_rate`` 0: no
    sampling; an image is kept when either says so, within the caps."""

    below_score: float | None = 0.5
    sample_rate: float = 0.0
    max_per_hour: int = 100
    max_images: int = 1000
    expire_after_days: float | None = None
    dataset: str | None = None  # where accepted images go (default: the model's own)

    def reason(self, score: float, draw: float) -> str | None:
        """Why an image with top score ``score`` is kept (``draw``: uniform in [0, 1)),
        or None."""
        if self.below_score is not None and score < self.below_score:
            return "below_score"
        if draw < self.sample_rate:
            return "sampled"
        return None


@dataclass
class Captured:
    """A prediction to keep: the image and the answer."""

    model: str
    version: int
    top: list[dict[str, Any]]
    unknown: bool
    reason: str
    filename: str | None
    media_type: str
    data: bytes


class CaptureLimit(Exception):
    """A capture the rule's caps (or the service's byte limit) leave out; ``reason``
    names which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def not_found(capture_id: str) -> CaptureError:
    return CaptureError("capture_not_found", f"no captured prediction {capture_id!r}", 404)


class CaptureStore(SqlStore):
    """Capture rules and captured predictions: rows in the database, images in ``objects``."""

    def __init__(self, target: Any, objects: ObjectStore, max_bytes: int) -> None:
        self.objects = objects
        self.max_bytes = max_bytes
        super().__init__(target)

    def _setup(self, db: Connection) -> None:
        metadata.create_all(db)

    # -- rules -----------------------------------------------------------------------------

    def rules(self) -> dict[str, CaptureRule]:
        with self._read() as db:
            rows = db.execute(sa.select(capture_rules.c.model, capture_rules.c.rule)).all()
        return {model: CaptureRule(**json.loads(rule)) for model, rule in rows}

    def rule(self, model: str) -> CaptureRule | None:
        return self.rules().get(model)

    def set_rule(self, model: str, rule: CaptureRule) -> None:
        now = utc_now()
        with self._write() as db:
            db.execute(capture_rules.delete().where(capture_rules.c.model == model))
            db.execute(
                capture_rules.insert().values(
                    model=model, rule=json.dumps(asdict(rule)), updated_at=now
                )
            )

    def delete_rule(self, model: str) -> bool:
        with self._write() as db:
            result = db.execute(capture_rules.delete().where(capture_rules.c.model == model))
        return bool(result.rowcount)

    # -- keeping ---------------------------------------------------------------------------

    def _check_caps(self, db: Connection, rule: CaptureRule, model: str, size: int) -> None:
        hour_ago = time.time() - 3600
        per_model = sa.select(sa.func.count()).where(captures.c.model == model)
        if db.execute(per_model.where(captures.c.created_ts > hour_ago)).scalar_one() >= (
            rule.max_per_hour
        ):
            raise CaptureLimit("max_per_hour")
        if db.execute(per_model).scalar_one() >= rule.max_images:
            raise CaptureLimit("max_images")
        held = db.execute(sa.select(sa.func.coalesce(sa.func.sum(captures.c.bytes), 0)))
        if int(held.scalar_one()) + size > self.max_bytes:
            raise CaptureLimit("max_bytes")

    def keep(self, item: Captured, rule: CaptureRule) -> str:
        """Store ``item`` under the caps of ``rule``: its id, or `CaptureLimit`. A storage
        error (a full disk) raises as it is, and nothing is kept."""
        capture_id = uuid.uuid4().hex
        key = f"{item.model}/{capture_id}"
        self.objects.write(key, item.data)
        now = time.time()
        try:
            with self._write() as db:  # again under the write lock: replicas race here
                self._check_caps(db, rule, item.model, len(item.data))
                top = item.top[0]
                db.execute(
                    captures.insert().values(
                        id=capture_id,
                        model=item.model,
                        version=item.version,
                        label=top["label"],
                        score=float(top["score"]),
                        unknown=int(item.unknown),
                        top=json.dumps(item.top),
                        reason=item.reason,
                        filename=item.filename,
                        media_type=item.media_type,
                        bytes=len(item.data),
                        created_at=utc_now(),
                        created_ts=now,
                        expires_ts=(
                            now + rule.expire_after_days * 86400
                            if rule.expire_after_days is not None
                            else None
                        ),
                    )
                )
        except BaseException:
            self.objects.delete(key)
            raise
        return capture_id

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _decode(row: Any) -> dict[str, Any]:
        item = dict(row._mapping)
        item["top"] = json.loads(item["top"])
        item["unknown"] = bool(item["unknown"])
        return item

    def page(
        self,
        model: str | None = None,
        order: str = "newest",
        label: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of captures (of one model, of one predicted class) and how many there
        are in all."""
        # What expired is hidden at once; the writer's housekeeping deletes it.
        where = [sa.or_(captures.c.expires_ts.is_(None), captures.c.expires_ts > time.time())]
        if model is not None:
            where.append(captures.c.model == model)
        if label is not None:
            where.append(captures.c.label == label)
        ordering = {
            "newest": (captures.c.created_ts.desc(), captures.c.id),
            "least_confident": (captures.c.score, captures.c.created_ts.desc()),
            "class": (captures.c.label, captures.c.score, captures.c.id),
        }[order]
        with self._read() as db:
            total = db.execute(sa.select(sa.func.count()).select_from(captures).where(*where))
            rows = db.execute(
                sa.select(captures).where(*where).order_by(*ordering).offset(offset).limit(limit)
            ).all()
            return [self._decode(r) for r in rows], int(total.scalar_one())

    def get(self, capture_id: str) -> dict[str, Any]:
        with self._read() as db:
            row = db.execute(sa.select(captures).where(captures.c.id == capture_id)).one_or_none()
        if row is None:
            raise not_found(capture_id)
        return self._decode(row)

    def image(self, capture_id: str) -> tuple[dict[str, Any], bytes]:
        item = self.get(capture_id)
        try:
            return item, self.objects.read(f"{item['model']}/{capture_id}")
        except ObjectMissing:
            raise not_found(capture_id) from None

    def counts(self, model: str) -> dict[str, int]:
        """Captures of ``model``: in all, in the last hour, and their bytes."""
        hour_ago = time.time() - 3600
        with self._read() as db:
            total, recent, size = db.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.coalesce(
                        sa.func.sum(sa.case((captures.c.created_ts > hour_ago, 1), else_=0)), 0
                    ),
                    sa.func.coalesce(sa.func.sum(captures.c.bytes), 0),
                ).where(captures.c.model == model)
            ).one()
        return {"images": int(total), "last_hour": int(recent), "bytes": int(size)}

    # -- deleting --------------------------------------------------------------------------

    def delete(self, capture_id: str) -> dict[str, Any]:
        """Delete one capture (its row, then its image); returns what it was."""
        with self._write() as db:
            row = db.execute(sa.select(captures).where(captures.c.id == capture_id)).one_or_none()
            if row is None:
                raise not_found(capture_id)
            db.execute(captures.delete().where(captures.c.id == capture_id))
        item = self._decode(row)
        self.objects.delete(f"{item['model']}/{capture_id}")
        return item

    def delete_model(self, model: str, rule_too: bool = False) -> int:
        """Delete every capture of ``model`` (and its rule: the model is gone)."""
        with self._write() as db:
            n = db.execute(captures.delete().where(captures.c.model == model)).rowcount
            if rule_too:
                db.execute(capture_rules.delete().where(capture_rules.c.model == model))
        self.objects.delete_prefix(f"{model}/")
        return int(n)

    def expire(self, now: float | None = None) -> int:
        """Delete the captures whose time is up."""
        now = time.time() if now is None else now
        with self._write() as db:
            rows = db.execute(
                sa.select(captures.c.id, captures.c.model).where(captures.c.expires_ts <= now)
            ).all()
            if rows:
                db.execute(captures.delete().where(captures.c.id.in_([r[0] for r in rows])))
        for capture_id, model in rows:
            self.objects.delete(f"{model}/{capture_id}")
        return len(rows)
