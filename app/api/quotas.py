"""Quotas: how many predictions a minute, uploads a day and jobs a day a caller may send.

A caller is its key (by id) or, without one, its address. The limits are the settings'
(``CONVSERVE_PREDICT_RATE``, ``CONVSERVE_UPLOADS_PER_DAY``, ``CONVSERVE_JOBS_PER_DAY``), or
the key's own (``limits`` when it was made). The counters are the `limits` library's fixed
windows: in this process, or in Redis (``CONVSERVE_RATE_LIMIT_URL``, by default the
deployment's ``CONVSERVE_BROKER_URL``) so that every replica counts against one number.
Past a limit the answer is 429 with ``Retry-After`` and a sentence.

The bytes a caller has sent to be kept in datasets (``CONVSERVE_STORED_BYTES``, or the key's
``stored``) are a ledger in the service's database, not a window: an upload that would take
the caller past it is refused before it is read, 507 ``storage_quota`` (RFC 4331's answer to
a quota), and deleting a dataset gives its bytes back.
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import RateLimitItem, parse, storage, strategies
from pydantic import ByteSize, TypeAdapter

from app.errors import ConvserveError

KINDS = ("predict", "uploads", "jobs")
WORDS = {"predict": "predictions", "uploads": "uploads", "jobs": "fine-tuning jobs"}


def default_limits(settings: Any) -> dict[str, str | None]:
    """The limits of a caller without its own, as `limits` strings (None: no limit)."""
    return {
        "predict": settings.predict_rate,
        "uploads": f"{settings.uploads_per_day}/day" if settings.uploads_per_day else None,
        "jobs": f"{settings.jobs_per_day}/day" if settings.jobs_per_day else None,
    }


class Quotas:
    def __init__(self, settings: Any) -> None:
        url = settings.rate_limit_url or settings.broker_url or "memory://"
        self.limiter = strategies.FixedWindowRateLimiter(storage.storage_from_string(url))
        self.defaults = default_limits(settings)
        self._parsed: dict[str, RateLimitItem] = {}

    def _item(self, text: str) -> RateLimitItem:
        if text not in self._parsed:
            self._parsed[text] = parse(text)
        return self._parsed[text]

    def spend(self, kind: str, caller: str, own: dict[str, Any] | None = None) -> None:
        """Count one ``kind`` for ``caller``; 429 past its limit."""
        text = (own or {}).get(kind) or self.defaults.get(kind)
        if not text:
            return
        item = self._item(text)
        if self.limiter.hit(item, kind, caller):
            return
        reset, _ = self.limiter.get_window_stats(item, kind, caller)
        wait = max(1, math.ceil(reset - time.time()))
        raise ConvserveError(
            "rate_limited",
            f"this caller has used its {WORDS[kind]} ({text}); try again in {wait} s",
            429,
            {"Retry-After": str(wait)},
        )


_BYTES = TypeAdapter(ByteSize)


def parse_size(text: str | int) -> int:
    """A size as people write it: 500MB, 2 GiB, 1000000."""
    return int(_BYTES.validate_python(text))


def check_stored(used: int, size: int, limit: int | None) -> None:
    """507 when ``size`` more bytes would take a caller that keeps ``used`` past ``limit``."""
    if limit is None or used + size <= limit:
        return
    raise ConvserveError(
        "storage_quota",
        f"this caller keeps {_size(used)} in datasets and this upload is {_size(size)};"
        f" its quota is {_size(limit)}: delete a dataset it no longer needs, or ask for a"
        " larger quota",
        507,
    )


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
