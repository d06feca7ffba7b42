"""Safe extraction of an uploaded dataset archive (.zip, .tar, .tar.gz).

Every member is checked before a byte is written: no absolute paths, no ``..``, no links
or devices, at most ``max_files`` files and ``max_bytes`` uncompressed bytes (counted
while writing too, so a header that lies about its size gains nothing). Junk that archivers
and file managers add (``__MACOSX``, ``.DS_Store``, hidden files) is left out.
"""

from __future__ import annotations

import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from app.errors import ConvserveError

CHUNK = 1024 * 1024


class ArchiveError(ConvserveError):
    """An archive that cannot be used (HTTP 400 unless said otherwise)."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 20_000
    max_bytes: int = 2 * 1024**3


@dataclass
class _Member:
    name: str
    size: int
    is_dir: bool
    is_file: bool
    opener: object  # how to read it: zip info or tar info


def _safe_parts(name: str) -> tuple[str, ...]:
    if "\\" in name:
        name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError("unsafe_archive", f"the archive holds an absolute path: {name!r}")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError("unsafe_archive", f"the archive holds a path leaving it: {name!r}")
    return parts


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(
        p == "__MACOSX" or p.startswith(".") or p in ("Thumbs.db", "desktop.ini") for p in parts
    )


def detect_format(path: Path) -> str:
    """``zip``, ``tar`` (plain or compressed) or an ``invalid_archive`` error."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise ArchiveError("invalid_archive", "the uploaded archive is empty")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError):
        pass
    raise ArchiveError("invalid_archive", "the upload is not a .zip, .tar or .tar.gz archive")


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError("unsafe_archive", f"the archive holds a link: {info.filename!r}")
        yield _Member(info.filename, info.file_size, info.is_dir(), not info.is_dir(), info)


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
    for info in tf:
        if info.issym() or info.islnk():
            raise ArchiveError("unsafe_archive", f"the archive holds a link: {info.name!r}")
        if not (info.isfile() or info.isdir()):
            raise ArchiveError("unsafe_archive", f"the archive holds a special file: {info.name!r}")
        yield _Member(info.name, info.size, info.isdir(), info.isfile(), info)


# What zipfile and tarfile can raise on damaged bytes, besides their own errors: a name
# flagged as UTF-8 that is not (UnicodeDecodeError, a ValueError; found by
# tests/data/test_untrusted_bytes.py), short or inconsistent header fields (IndexError,
# struct.error), a damaged deflate stream (zlib.error), a compression method they do not
# know (NotImplementedError, a RuntimeError).
_CORRUPT = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    RuntimeError,
    ValueError,
    IndexError,
    struct.error,
    zlib.error,
)


@contextmanager
def _open(path: Path, fmt: str) -> Iterator[tuple[list[_Member], object]]:
    try:
        if fmt == "zip":
            with zipfile.ZipFile(path) as zf:
                yield list(_zip_members(zf)), zf
        else:
            with tarfile.open(path, "r:*") as tf:
                yield list(_tar_members(tf)), tf
    except ArchiveError:
        raise
    except _CORRUPT as exc:
        raise ArchiveError("invalid_archive", f"the archive is corrupt: {exc}") from exc


def _copy_capped(src: IO[bytes], dst: IO[bytes], budget: int) -> int:
    written = 0
    while chunk := src.read(CHUNK):
        written += len(chunk)
        if written > budget:
            raise ArchiveError(
                "archive_too_large", "the archive unpacks to more bytes than allowed", 413
            )
        dst.write(chunk)
    return written


def extract_archive(path: Path, destination: Path, limits: ArchiveLimits | None = None) -> int:
    """Check and extract ``path`` into ``destination``; returns the number of files written.

    Raises:
        ArchiveError: ``invalid_archive`` (not an archive, corrupt), ``unsafe_archive``
            (absolute path, ``..``, link, device), ``archive_too_large`` (413: too many
            files or bytes).
    """
    limits = limits or ArchiveLimits()
    fmt = detect_format(path)
    destination.mkdir(parents=True, exist_ok=True)
    with _open(path, fmt) as (members, handle):
        plan = []
        declared = 0
        for m in members:
            parts = _safe_parts(m.name)
            if not parts or _is_junk(parts) or m.is_dir:
                continue
            plan.append((parts, m))
            declared += m.size
        if len(plan) > limits.max_files:
            raise ArchiveError(
                "archive_too_large",
                f"the archive holds {len(plan)} files; the limit is {limits.max_files}",
                413,
            )
        if declared > limits.max_bytes:
            raise ArchiveError(
                "archive_too_large",
                f"the archive unpacks to {declared} bytes; the limit is {limits.max_bytes}",
                413,
            )
        budget = limits.max_bytes
        try:
            for parts, m in plan:
                target = destination.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(handle, zipfile.ZipFile):
                    src = handle.open(m.opener)  # type: ignore[arg-type]
                else:
                    assert isinstance(handle, tarfile.TarFile)
                    extracted = handle.extractfile(m.opener)  # type: ignore[arg-type]
                    if extracted is None:
                        continue
                    src = extracted
                with src, open(target, "wb") as out:
                    budget -= _copy_capped(src, out, budget)
        except ArchiveError:
            shutil.rmtree(destination, ignore_errors=True)
            raise
        except _CORRUPT as exc:
            shutil.rmtree(destination, ignore_errors=True)
            raise ArchiveError("invalid_archive", f"the archive is corrupt: {exc}") from exc
    return len(plan)
