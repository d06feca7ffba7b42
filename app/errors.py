"""The one error type the service turns into an HTTP answer."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator


class ConvserveError(Exception):
    """An error with a stable snake_case ``code``, a human sentence and an HTTP status."""

    status = 400

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}


_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def disk_error(exc: BaseException, where: str) -> ConvserveError | None:
    """The service's error for a write that the disk refused, or None for anything else.

    Looks through the exception's causes (Keras and h5py wrap the ``OSError``). ``where``
    names what was being written, e.g. "the model registry".
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return ConvserveError(
                "storage_full", f"no space left on the disk of {where}: {seen.strerror}", 507
            )
        if isinstance(seen, OSError) and seen.errno in _NOT_WRITABLE:
            return ConvserveError(
                "storage_not_writable",
                f"the service cannot write to {where} (read-only or no permission): "
                f"{seen.strerror}",
                503,
            )
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def writing_to(where: str) -> Iterator[None]:
    """Turns a write the disk refused (full, read-only, no permission) into the service's
    error with a stable code; other errors pass unchanged."""
    try:
        yield
    except ConvserveError:
        raise
    except Exception as exc:
        error = disk_error(exc, where)
        if error is None:
            raise
        raise error from exc
