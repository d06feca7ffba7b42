"""The storage interface: named objects (bytes) under keys like ``a/b/c``, and what every
backend shares (name rules, atomic local writes)."""

from __future__ import annotations

import contextlib
import os
import uuid
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path

from app.names import NAME_RULE

# Model and dataset names.


def name_rule(kind: str) -> str:
    return f"a {kind} name is {NAME_RULE}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_synced(path: Path, data: bytes) -> None:
    """Write ``path`` and wait until the disk has it."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file, flushed, renamed into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ObjectMissing(KeyError):
    """No object under that key."""


class ObjectExists(Exception):
    """A create-only write found an object under that key already."""


class ObjectStore(ABC):
    """Objects under keys (``/``-separated, no ``..``), in a folder or a bucket.

    Guarantees every backend keeps: a write is seen whole or not at all; a create-only
    write (``create_only=True``) succeeds for exactly one of several writers of the same
    key; `locked` excludes every other holder of the same key, across processes and hosts
    sharing the store.
    """

    #: What a disk-full or permission error names ("the model registry", ...).
    where = "the storage"

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes. Raises `ObjectMissing`."""

    @abstractmethod
    def write(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        """Write an object. With ``create_only``, raise `ObjectExists` if there is one."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix`` (sorted)."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (``""``, or ending in ``/``) that hold
        objects: folders or objects, without listing what is further down."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object; one that is not there is no error."""

    def delete_prefix(self, prefix: str) -> None:
        for key in self.keys(prefix):
            self.delete(key)

    @abstractmethod
    def locked(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Hold the lock named ``key`` (for a step that must not run twice at once)."""


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or key.startswith("/"):
        raise ValueError(f"not a storage key: {key!r}")
    return key
