"""`ObjectStore` in a local folder (or one every host mounts)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from app.errors import writing_to
from app.storage.objects import (
    ObjectExists,
    ObjectMissing,
    ObjectStore,
    check_key,
    fsync_dir,
    write_bytes_atomic,
    write_synced,
)

LOCKS_DIR = ".locks"


class LocalObjects(ObjectStore):
    """Each object a file under ``root``. Writes go to a temporary file first; a
    create-only write links it into place (``link`` refuses an existing name), so of two
    writers one wins and nobody ever reads half an object. Locks are ``flock``s."""

    def __init__(self, root: Path, where: str = "the storage") -> None:
        self.root = Path(root)
        self.where = where

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectMissing(key) from None

    def write(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        path = self._path(key)
        with writing_to(self.where):
            path.parent.mkdir(parents=True, exist_ok=True)
            if not create_only:
                write_bytes_atomic(path, data)
                return
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            try:
                write_synced(tmp, data)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ObjectExists(key) from None
                fsync_dir(path.parent)
            finally:
                tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str) -> list[str]:
        # The folder that holds the prefix, walked; hidden files are temporaries or locks.
        start = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not start.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)

    def children(self, prefix: str) -> list[str]:
        folder = self.root / prefix if prefix else self.root
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def delete(self, key: str) -> None:
        with writing_to(self.where):
            self._path(key).unlink(missing_ok=True)

    def locked(self, key: str) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / LOCKS_DIR / check_key(key), self.where)


@contextlib.contextmanager
def file_lock(path: Path, where: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (made if missing), across threads and
    processes sharing the folder."""
    with writing_to(where):  # a full or read-only disk: 507 / 503
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 (closed below)
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
