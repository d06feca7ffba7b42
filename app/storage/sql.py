"""The service's SQL database: jobs, captured predictions and their settings.

SQLite (a file under the data folder) is the default; PostgreSQL is used when
``CONVSERVE_DATABASE_URL`` is set, so that API replicas and training workers on several
hosts share one database. Every store on it goes through SQLAlchemy Core, and every write
is one transaction, serialized against every other writer (``BEGIN IMMEDIATE`` on SQLite,
a transaction advisory lock on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

# Key of the PostgreSQL advisory lock that serializes writes (any constant; "convserv").
WRITE_LOCK_KEY = 0x636F6E7673657276


def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL for ``target``: a URL as it is, a path as a SQLite file."""
    text = str(target)
    if "://" in text:
        if text.startswith(("postgresql://", "postgres://")):
            # the driver this project installs (psycopg 3), not SQLAlchemy's default psycopg2
            text = "postgresql+psycopg://" + text.split("://", 1)[1]
        return text
    return f"sqlite:///{Path(text)}"


def settings_database(settings: Any) -> str | Path:
    """The database the settings name: ``database_url``, or SQLite under the data folder."""
    return settings.database_url or settings.data_dir / "jobs.sqlite"


def _sqlite_engine(url: str) -> Engine:
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # No pool: each call opens its own short-lived connection, so the API process and the
    # job processes never share one and a killed process leaves nothing locked.
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Reads run without a transaction (WAL lets them overlap writes); writes take the
        # write lock at once, so two of them never interleave.
        if not connection.get_execution_options().get("read_only"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class SqlStore:
    """A store of the service's database: its engine, reads and serialized writes.
    Subclasses create their tables in `_setup` (called in the first write)."""

    def __init__(self, target: str | Path) -> None:
        """Open (creating if needed) the database at ``target``: a SQLite file path, or a
        database URL (``postgresql://user:password@host/db``, ``sqlite:///path``)."""
        self.url = database_url(target)
        if self.url.startswith("sqlite"):
            self.engine = _sqlite_engine(self.url)
        else:
            self.engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=4)
        self.is_postgresql = self.engine.dialect.name == "postgresql"
        with self._write() as db:
            self._setup(db)

    def _setup(self, db: Connection) -> None:
        """Create the store's tables (and bring older ones up to date)."""

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(read_only=True) as db:
            yield db

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction, serialized against every other writer of the database."""
        with self.engine.begin() as db:
            if self.is_postgresql:
                db.execute(sa.select(sa.func.pg_advisory_xact_lock(WRITE_LOCK_KEY)))
            yield db
