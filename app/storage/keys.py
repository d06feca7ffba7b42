"""API keys with scopes, and the audit log of what was done with them.

A key is ``cs_<id>_<secret>``: its id (also its public prefix, ``cs_<id>``) finds its row,
and the whole key is checked against an Argon2id hash of it (argon2-cffi); the key itself
is never stored and is shown once, when it is created. Keys and the audit log are rows in
the service's database (`app.storage.sql`), so every replica knows them.

Scopes: ``predict`` (predictions and reads), ``train`` (also datasets, review, jobs),
``admin`` (everything: activate, delete, export, rollouts, keys); each includes the ones
before it. A key may be limited to some models.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Connection

from app.errors import ConvserveError
from app.storage.objects import utc_now
from app.storage.sql import SqlStore

SCOPES = ("predict", "train", "admin")
# The scopes each one grants.
GRANTS = {"predict": {"predict"}, "train": {"predict", "train"}, "admin": set(SCOPES)}
# A key is 256 random bits: no dictionary to slow down, so a light Argon2 setting (a few
# ms a check; each key is checked once per replica and then remembered for a while).
HASHER = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)

metadata = sa.MetaData()
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),  # JSON list
    sa.Column("models", sa.Text),  # JSON list, or null: every model
    sa.Column("limits", sa.Text),  # JSON {"predict", "uploads", "jobs", "stored"}: its own quotas
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.Text),
)
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Text, nullable=False),
    sa.Column("key_id", sa.Text),  # "bootstrap" for CONVSERVE_API_KEY, null: no key
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("client", sa.Text),
    sa.Column("scope", sa.Text, nullable=False),  # the scope the action needs
)


# Bytes each caller ("key:<id>", "address:<ip>") sent to be kept, per dataset: the
# bytes-stored quota; a dataset's entries go when it is deleted.
stored_bytes = sa.Table(
    "stored_bytes",
    metadata,
    sa.Column("caller", sa.Text, primary_key=True),
    sa.Column("dataset", sa.Text, primary_key=True),
    sa.Column("bytes", sa.BigInteger, nullable=False),
)


def prefix(key_id: str) -> str:
    return f"cs_{key_id}"


AUDIT_PRUNE_SECONDS = 3600.0  # how often a replica drops audit entries past their keep


class KeyStore(SqlStore):
    """API keys (hashed) and the audit log, which keeps ``audit_days`` days of entries."""

    def __init__(self, target: str | Path, audit_days: int = 90) -> None:
        self.audit_days = audit_days
        self._next_prune = 0.0
        super().__init__(target)

    def _setup(self, db: Connection) -> None:
        metadata.create_all(db)

    @staticmethod
    def _decode(row: Any) -> dict[str, Any]:
        key = dict(row._mapping)
        key.pop("hash", None)
        key["scopes"] = json.loads(key["scopes"])
        key["models"] = json.loads(key["models"]) if key["models"] else None
        key["limits"] = json.loads(key["limits"]) if key.get("limits") else None
        key["prefix"] = prefix(key["id"])
        return key

    def create(
        self,
        name: str,
        scopes: Sequence[str],
        models: Sequence[str] | None,
        limits: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, Any], str]:
        """A new key: its record, and the key itself (shown once)."""
        key_id = secrets.token_hex(6)
        token = f"{prefix(key_id)}_{secrets.token_urlsafe(32)}"
        with self._write() as db:
            db.execute(
                api_keys.insert().values(
                    id=key_id,
                    name=name,
                    hash=HASHER.hash(token),
                    scopes=json.dumps(sorted(set(scopes), key=SCOPES.index)),
                    models=json.dumps(sorted(set(models))) if models else None,
                    limits=json.dumps(dict(limits)) if limits else None,
                    created_at=utc_now(),
                )
            )
        return self.get(key_id), token

    def get(self, key_id: str) -> dict[str, Any]:
        with self._read() as db:
            row = db.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
        if row is None:
            raise ConvserveError("key_not_found", f"no API key {key_id!r}", 404)
        return self._decode(row)

    def page(self) -> list[dict[str, Any]]:
        with self._read() as db:
            rows = db.execute(sa.select(api_keys).order_by(api_keys.c.created_at)).all()
        return [self._decode(r) for r in rows]

    def revoke(self, key_id: str) -> dict[str, Any]:
        self.get(key_id)  # 404 first
        with self._write() as db:
            db.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            )
        return self.get(key_id)

    def active(self) -> int:
        with self._read() as db:
            n = db.execute(
                sa.select(sa.func.count()).where(api_keys.c.revoked_at.is_(None))
            ).scalar_one()
        return int(n)

    def verify(self, token: str) -> dict[str, Any] | None:
        """The key's record when ``token`` is a key that is not revoked, else None."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "cs":
            return None
        with self._read() as db:
            row = db.execute(sa.select(api_keys).where(api_keys.c.id == parts[1])).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        try:
            HASHER.verify(row.hash, token)
        except (VerificationError, InvalidHashError):
            return None
        return self._decode(row)

    # -- bytes stored ------------------------------------------------------------------------

    def stored(self, caller: str) -> int:
        """The bytes ``caller`` has sent to be kept in datasets that still exist."""
        with self._read() as db:
            total = db.execute(
                sa.select(sa.func.coalesce(sa.func.sum(stored_bytes.c.bytes), 0)).where(
                    stored_bytes.c.caller == caller
                )
            ).scalar_one()
        return int(total)

    def charge(self, caller: str, dataset: str, size: int) -> None:
        with self._write() as db:
            row = {"caller": caller, "dataset": dataset}
            updated = db.execute(
                stored_bytes.update()
                .where(stored_bytes.c.caller == caller, stored_bytes.c.dataset == dataset)
                .values(bytes=stored_bytes.c.bytes + size)
            )
            if updated.rowcount == 0:
                db.execute(stored_bytes.insert().values(**row, bytes=size))

    def refund(self, dataset: str) -> None:
        """A dataset was deleted: what was sent to it no longer counts."""
        with self._write() as db:
            db.execute(stored_bytes.delete().where(stored_bytes.c.dataset == dataset))

    # -- the audit log ---------------------------------------------------------------------

    def record(
        self,
        key_id: str | None,
        method: str,
        path: str,
        status: int,
        client: str | None,
        scope: str,
    ) -> None:
        with self._write() as db:
            db.execute(
                audit_log.insert().values(
                    at=utc_now(),
                    key_id=key_id,
                    method=method,
                    path=path,
                    status=status,
                    client=client,
                    scope=scope,
                )
            )
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + AUDIT_PRUNE_SECONDS
                cutoff = datetime.now(UTC) - timedelta(days=self.audit_days)
                db.execute(
                    audit_log.delete().where(audit_log.c.at < cutoff.isoformat(timespec="seconds"))
                )

    def audit(
        self, key_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[dict[str, Any]], int]:
        """Audit entries, newest first (of one key), and how many there are."""
        where = [audit_log.c.key_id == key_id] if key_id else []
        with self._read() as db:
            total = db.execute(sa.select(sa.func.count()).select_from(audit_log).where(*where))
            rows = db.execute(
                sa.select(audit_log)
                .where(*where)
                .order_by(audit_log.c.seq.desc())
                .offset(offset)
                .limit(limit)
            ).all()
            return [dict(r._mapping) for r in rows], int(total.scalar_one())


def expires(seconds: float) -> float:
    return time.monotonic() + seconds
