"""Capture off the request path: a prediction offers its images (`Capturer.offer`, a few
microseconds: a score test and a queue put), and one thread writes the kept ones to the
`CaptureStore`. A prediction never waits for a capture and never fails because of one: a
full queue, a cap reached or a storage error (a full disk) drops the capture and counts it
in ``convserve_captures_total{outcome=...}``."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.serving.metrics import ServiceMetrics
from app.storage.captures import Captured, CaptureLimit, CaptureRule, CaptureStore

log = logging.getLogger(__name__)
TOP_KEPT = 5  # classes of the answer kept with an image
RULES_REFRESH_SECONDS = 2.0  # how soon a rule set on another replica applies here
# After a cap is reached, a model's captures are dropped here for this long without asking
# the database (a flood of uncertain predictions costs nothing more than counting them).
CAP_PAUSE_SECONDS = {"max_per_hour": 60.0, "max_images": 30.0, "max_bytes": 30.0}
WRITER_NICE = 10  # the writer thread yields the cores to serving (Linux: a thread's own nice)
EXPIRE_EVERY_SECONDS = 60.0
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
}


@dataclass
class _Offer:
    rule: CaptureRule
    model: str
    version: int
    top: list[dict[str, object]]
    unknown: bool
    reason: str
    filename: str | None
    image: bytes | np.ndarray  # as sent, or the pixels of a tensor request


def media_type(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return MEDIA_TYPES.get(img.format or "", "application/octet-stream")
    except Exception:
        return "application/octet-stream"


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


class Capturer:
    """The capture rules in force here (re-read every few seconds) and the writer."""

    def __init__(
        self, store: CaptureStore | None, metrics: ServiceMetrics, queue_size: int = 256
    ) -> None:
        self.store, self.metrics = store, metrics
        self.rules: dict[str, CaptureRule] = {}
        self.queue: queue.Queue[_Offer | None] = queue.Queue(maxsize=queue_size)
        self.random = random.Random()
        self._thread: threading.Thread | None = None
        self._next_expiry = 0.0
        self._paused: dict[str, tuple[str, float]] = {}  # model -> (cap, until)

    def start(self) -> None:
        if self.store is None or self._thread is not None:
            return
        self.reload()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self.queue.put(None)  # waits for room: what is queued is written first
        self._thread.join(timeout=30)
        self._thread = None

    def reload(self) -> None:
        """Read the rules again (the API calls it after a change, for this replica)."""
        if self.store is not None:
            rules = self.store.rules()
            # A changed rule (new caps) is tried at once.
            self._paused = {
                m: p for m, p in self._paused.items() if rules.get(m) == self.rules.get(m)
            }
            self.rules = rules

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every offer so far is written or dropped (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.queue.unfinished_tasks

    # -- the request path ------------------------------------------------------------------

    def offer(
        self,
        model: str,
        version: int,
        class_names: list[str],
        rows: list[np.ndarray],
        unknown: list[bool],
        images: Sequence[bytes | np.ndarray],
        filenames: list[str | None],
    ) -> None:
        """Queue the images of one answered request that ``model``'s rule keeps."""
        rule = self.rules.get(model)
        if rule is None:
            return
        paused = self._paused.get(model)
        for row, is_unknown, image, filename in zip(rows, unknown, images, filenames, strict=True):
            reason = rule.reason(float(row.max()), self.random.random())
            if reason is None:
                continue
            if paused is not None and time.monotonic() < paused[1]:
                self.metrics.captures.labels(model, paused[0]).inc()
                continue
            order = np.argsort(-row, kind="stable")[:TOP_KEPT]
            top = [{"label": class_names[i], "score": round(float(row[i]), 6)} for i in order]
            offer = _Offer(rule, model, version, top, is_unknown, reason, filename, image)
            try:
                self.queue.put_nowait(offer)
            except queue.Full:
                self.metrics.captures.labels(model, "busy").inc()

    # -- the writer ------------------------------------------------------------------------

    def _run(self) -> None:
        assert self.store is not None
        with contextlib.suppress(AttributeError, OSError):  # not Linux: the default priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
        refreshed = time.monotonic()
        while True:
            try:
                offer = self.queue.get(timeout=RULES_REFRESH_SECONDS)
            except queue.Empty:
                offer = None
                if self._thread is None:
                    return
            else:
                if offer is None:
                    self.queue.task_done()
                    return
                try:
                    self._keep(offer)
                finally:
                    self.queue.task_done()
            now = time.monotonic()
            if now - refreshed >= RULES_REFRESH_SECONDS:
                refreshed = now
                self._housekeeping()

    def _housekeeping(self) -> None:
        assert self.store is not None
        try:
            self.reload()
            if time.monotonic() >= self._next_expiry:
                self._next_expiry = time.monotonic() + EXPIRE_EVERY_SECONDS
                self.store.expire()
        except Exception:
            log.exception("capture: reading the rules or expiring old captures failed")

    def _keep(self, offer: _Offer) -> None:
        assert self.store is not None
        try:
            data = offer.image if isinstance(offer.image, bytes) else png(offer.image)
            item = Captured(
                offer.model,
                offer.version,
                offer.top,
                offer.unknown,
                offer.reason,
                offer.filename,
                media_type(data),
                data,
            )
            self.store.keep(item, offer.rule)
        except CaptureLimit as exc:
            self.metrics.captures.labels(offer.model, exc.reason).inc()
            pause = CAP_PAUSE_SECONDS.get(exc.reason, 30.0)
            self._paused[offer.model] = (exc.reason, time.monotonic() + pause)
        except Exception:
            # A full disk, a storage outage: the capture is dropped, the service goes on.
            log.warning("capture of a %s prediction dropped", offer.model, exc_info=True)
            self.metrics.captures.labels(offer.model, "storage").inc()
        else:
            self.metrics.captures.labels(offer.model, "kept").inc()
