"""The one inference path: ``/predict``, the TF Serving and KServe V2 routers (and the
console, which calls ``/predict``) run their images through `Inference`, which checks the
request's limits, resolves the version, classifies through the model manager (batcher,
test-time augmentation) and counts the request, its images and its latency in the metrics
with its protocol."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from app.config import Settings
from app.data.images import ImageError, load_image
from app.errors import ConvserveError
from app.serving.batcher import BatcherClosed, QueueFull
from app.serving.calibration import calibrate, version_trust
from app.serving.features import split_similarity
from app.serving.gradcam import Explainer, overlay_png
from app.serving.loader import LoadedVersion
from app.serving.manager import ModelManager
from app.serving.metrics import ServiceMetrics
from app.serving.tta import VIEWS, combine, decode_size, expand

log = logging.getLogger("convserve.inference")


class InputSizeChanged(ConvserveError):
    """Images decoded for a version that was swapped for one with another input size."""

    def __init__(self, name: str, current: LoadedVersion) -> None:
        super().__init__(
            "model_unavailable",
            f"model {name!r} changed its input size while the request was decoded; retry",
            503,
            {"Retry-After": "0"},
        )
        self.current = current


class Upload(Protocol):
    """An uploaded file, as the web framework gives it (starlette's ``UploadFile``)."""

    filename: str | None
    size: int | None

    async def read(self) -> bytes: ...


def bad_input(message: str, code: str = "invalid_input") -> ConvserveError:
    return ConvserveError(code, message, 400)


def pixels(array: np.ndarray, size: int, where: str) -> list[np.ndarray]:
    """A pixel tensor ``[N, size, size, 3]`` of raw RGB 0-255 values as the uint8 images
    the model is served (float values are rounded)."""
    if array.ndim != 4 or array.shape[1:] != (size, size, 3):
        raise bad_input(
            f"{where}: shape {list(array.shape)} given; this model takes [N, {size}, {size}, 3]"
            " raw RGB pixels (0-255), or encoded images",
            "invalid_shape",
        )
    if array.shape[0] == 0:
        raise bad_input(f"{where}: no images")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise bad_input(f"{where}: pixel values must be within 0-255", "invalid_pixels")
    if array.dtype != np.uint8:
        array = np.rint(array).astype(np.uint8)
    return list(array)


@dataclass
class Classified:
    """What a version answered for a request's images."""

    loaded: LoadedVersion
    rows: list[np.ndarray]  # probabilities, one row per image
    # Per image, the similarity of its features to the nearest training image's (versions
    # that answer unknown by it; `app.serving.features`), else None.
    similarity: list[float] | None = None


Run = Callable[[int | None], Awaitable[Classified]]


@dataclass
class Outcome:
    loaded: LoadedVersion
    rows: list[np.ndarray]  # calibrated probabilities, where the version has a calibration
    unknown: list[bool]  # per image: the version abstains (its score is under the threshold)
    similarity: list[float] | None = None  # as `Classified.similarity`

    @property
    def probabilities(self) -> np.ndarray:
        return np.stack(self.rows).astype(np.float32)


class Inference:
    """Runs a protocol request's images through the manager and counts it in the metrics
    with its protocol."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: ServiceMetrics,
        settings: Settings,
        protocol: str,
        name: str,
        abstain: bool = True,
        threshold: float | None = None,
    ) -> None:
        """``abstain``: answer "unknown" under the version's threshold (false: never);
        ``threshold``: the client's own instead of the version's."""
        self.manager, self.metrics, self.settings = manager, metrics, settings
        self.protocol, self.name = protocol, name
        self.abstain, self.threshold = abstain, threshold
        self.blobs: list[bytes] = []  # the encoded images of the last upload
        self.status, self.served = 500, "none"
        # A request that names no version takes part in a rollout (`_route`).
        self.pinned, self.unknown_count = True, 0

    @asynccontextmanager
    async def counted(self) -> AsyncIterator[Inference]:
        label = self.name if self.name in self.manager.models else "unknown"
        started = time.perf_counter()
        try:
            yield self
            self.status = 200
        except ConvserveError as exc:
            self.status = exc.status
            raise
        finally:
            seconds = time.perf_counter() - started
            labels = (label, self.served, str(self.status), self.protocol)
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(seconds)
            if not self.pinned and self.served != "none":
                ok = self.status < 500
                self.manager.rollouts.observe(
                    self.name, int(self.served), seconds, ok, self.unknown_count
                )

    def _check_count(self, n: int) -> None:
        if n > self.settings.max_files_per_request:
            raise ConvserveError(
                "too_many_files",
                f"{n} images in one request; the limit is {self.settings.max_files_per_request}",
                413,
            )

    async def encoded(
        self,
        version: int | None,
        blobs: list[bytes],
        tta: str = "none",
        names: list[str | None] | None = None,
    ) -> Outcome:
        """Classify encoded images (any format ``/predict`` takes); ``names`` name them in
        errors (default ``image N``)."""
        self._check_count(len(blobs))
        if not blobs:
            raise bad_input("no images given")
        names = names or [f"image {n}" for n in range(len(blobs))]
        for name, blob in zip(names, blobs, strict=True):
            self.check_size(name, len(blob))
        routed = self._route(version)

        def run(v: int | None) -> Awaitable[Classified]:
            return self.classify(v, blobs, names, tta)

        outcome = self._outcome(await self._routed(routed, run))
        self._capture(outcome, blobs, names)
        self._compare(outcome, run)
        return outcome

    # -- rollouts ----------------------------------------------------------------------------

    def _route(self, version: int | None) -> int | None:
        """The version that answers: the pinned one, or a rollout's pick (the canary
        candidate for its share of requests), or None (the active one)."""
        self.pinned = version is not None
        return self.manager.rollouts.route(self.name, version)

    async def _routed(self, routed: int | None, run: Run) -> Classified:
        """Run on ``routed``; a canary candidate that fails is counted against it and the
        active version answers instead."""
        started = time.perf_counter()
        try:
            return await run(routed)
        except Exception as exc:
            client_error = isinstance(exc, ConvserveError) and exc.status < 500
            if self.pinned or routed is None or client_error:
                raise
            log.warning(
                "%s: canary version %s failed (%s); the active one answers", self.name, routed, exc
            )
            self.manager.rollouts.observe(self.name, routed, time.perf_counter() - started, False)
            return await run(None)

    def _compare(self, outcome: Outcome, run: Run) -> None:
        if not self.pinned:
            loaded = outcome.loaded
            self.manager.rollouts.compare_later(
                self.manager, self.name, loaded.version, outcome.rows, loaded.class_names, run
            )

    def check_size(self, name: str | None, size: int | None) -> None:
        """Refuse an image over ``max_image_bytes`` (before it is read, when its size is
        known)."""
        limit = self.settings.max_image_bytes
        if size is not None and size > limit:
            raise ConvserveError(
                "file_too_large",
                f"{name or 'a file'} is {size} bytes, over the limit of {limit}",
                413,
            )

    async def uploads(
        self, version: int | None, files: Sequence[Upload], tta: str = "none"
    ) -> Outcome:
        """Classify uploaded files: their count, the model and the version are checked
        before any file is read."""
        self._check_count(len(files))
        await self.manager.resolve(self.name, version)
        for upload in files:
            self.check_size(upload.filename, upload.size)
        blobs = [await upload.read() for upload in files]
        self.blobs = blobs
        return await self.encoded(version, blobs, tta, [f.filename for f in files])

    async def tensor(
        self, version: int | None, array: np.ndarray, where: str, tta: str = "none"
    ) -> Outcome:
        """Classify a pixel tensor ``[N, S, S, 3]``."""
        routed = self._route(version)
        target = await self.manager.resolve(self.name, routed)
        if routed is not None and not self.pinned:
            active = await self.manager.resolve(self.name)
            if active.image_size != target.image_size:  # the tensor is for the active one
                routed, target = None, active
        images = pixels(array, target.image_size, where)
        self._check_count(len(images))

        async def run(v: int | None) -> Classified:
            on = await self.manager.resolve(self.name, v)
            if on.image_size != len(images[0]):
                raise ConvserveError("invalid_shape", "another input size", 400)  # not compared
            return await self.predict(v, images, on, tta)

        outcome = self._outcome(await self._routed(routed, run))
        self._capture(outcome, images, [f"{where}[{n}]" for n in range(len(images))])
        self._compare(outcome, run)
        return outcome

    def _capture(
        self,
        outcome: Outcome,
        images: Sequence[bytes | np.ndarray],
        names: Sequence[str | None],
    ) -> None:
        """Offer the answered images to the model's capture rule (never waits, never
        fails the request)."""
        loaded = outcome.loaded
        self.manager.capture.offer(
            self.name,
            loaded.version,
            loaded.class_names,
            outcome.rows,
            outcome.unknown,
            images,
            list(names),
        )

    # -- explanations ------------------------------------------------------------------

    def check_explain(self, images: int) -> None:
        limit = self.settings.max_explained_images
        if images > limit:
            raise ConvserveError(
                "too_many_explanations",
                f"explain=gradcam on {images} images; one request may explain at most {limit}"
                " (CONVSERVE_MAX_EXPLAINED_IMAGES): send fewer, or leave explain out",
                413,
            )

    async def explain(
        self, outcome: Outcome, images: list[bytes] | np.ndarray, label: str | None = None
    ) -> list[dict[str, Any]]:
        """A Grad-CAM map per image (encoded, or pixels the model's size), for its top
        class or ``label``: the method, the class, the layer and the map as a base64 RGBA
        PNG the size the model saw."""
        loaded = outcome.loaded
        names = loaded.class_names
        if label is not None and label not in names:
            raise ConvserveError(
                "class_not_found",
                f"explain_class {label!r} is not a class of {self.name} version {loaded.version}",
                404,
            )
        classes = [
            names.index(label) if label is not None else int(row.argmax()) for row in outcome.rows
        ]
        loop = asyncio.get_running_loop()

        def run() -> tuple[str, np.ndarray]:
            if loaded.explainer is None:
                assert loaded.model_path is not None
                loaded.explainer = Explainer.load(loaded.model_path, loaded.image_size)
            size, pixels = loaded.image_size, self.settings.max_image_pixels
            seen = (
                images
                if isinstance(images, np.ndarray)
                else np.stack([load_image(blob, size, pixels) for blob in images])
            )
            return loaded.explainer.layer, loaded.explainer.maps(seen, classes)

        layer, maps = await loop.run_in_executor(self.manager.explainer, run)
        return [
            {
                "method": "gradcam",
                "label": names[c],
                "layer": layer,
                "png": base64.b64encode(overlay_png(heat)).decode(),
            }
            for c, heat in zip(classes, maps, strict=True)
        ]

    async def explain_image(self, version: int, blob: bytes, label: str) -> dict[str, Any]:
        """One encoded image's map for ``label`` on ``version`` (loaded if need be), as
        `explain` answers it."""
        loaded = await self.manager.resolve(self.name, version)
        placeholder = np.zeros(len(loaded.class_names), dtype=np.float32)
        return (await self.explain(Outcome(loaded, [placeholder], [False]), [blob], label))[0]

    # -- the request path: decode, queue on the version's batcher, combine views --------

    async def decode(
        self, blobs: list[bytes], filenames: list[str | None], size: int
    ) -> list[np.ndarray]:
        """Decode uploads off the event loop, in parallel; the first bad one raises its
        `ImageError`, naming the file."""
        loop = asyncio.get_running_loop()
        max_pixels = self.settings.max_image_pixels
        jobs = [
            loop.run_in_executor(self.manager.decoder, load_image, b, size, max_pixels)
            for b in blobs
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for filename, result in zip(filenames, results, strict=True):
            if isinstance(result, ImageError):
                result.message = f"{filename or 'image'}: {result.message}"
                raise result
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, np.ndarray)]

    async def classify(
        self,
        version: int | None,
        blobs: list[bytes],
        filenames: list[str | None],
        tta: str = "none",
    ) -> Classified:
        """Decode encoded images at the input size of the version that serves them and
        classify them (with test-time augmentation ``tta``). A swap to a version with
        another input size while they were being decoded makes them decode again for the
        new one: the request is not dropped."""
        target = await self.manager.resolve(self.name, version)
        self._check_views(len(blobs), tta)
        for _ in range(3):
            with target.batcher.expecting(len(blobs) * VIEWS[tta]):
                side = decode_size(target.image_size, tta)
                images = await self.decode(blobs, filenames, side)
            try:
                return await self.predict(version, images, target, tta)
            except InputSizeChanged as exc:
                target = exc.current
        raise ConvserveError(
            "model_unavailable", f"model {self.name!r} is being swapped", 503, {"Retry-After": "1"}
        )

    def _check_views(self, images: int, tta: str) -> None:
        """Refuse a request whose views alone would overflow the queue (it could never
        be taken), saying how many images fit."""
        limit = self.settings.max_queue_size
        if images * VIEWS[tta] > limit:
            raise ConvserveError(
                "too_many_files",
                f"tta={tta} classifies {VIEWS[tta]} views of each image: {images} images are"
                f" {images * VIEWS[tta]} for model {self.name!r}, over its queue of {limit};"
                f" send at most {limit // VIEWS[tta]}",
                413,
            )

    async def predict(
        self,
        version: int | None,
        images: list[np.ndarray],
        target: LoadedVersion | None = None,
        tta: str = "none",
    ) -> Classified:
        """Classify ``images`` on ``target`` (resolved earlier by the caller), or on the
        version that replaced it if it was swapped out meanwhile; returns the version
        that did it and one row per image. With ``tta`` each image's views are classified
        and their probabilities (and similarities) averaged (images may then come at the
        crop size)."""
        loaded = target or await self.manager.resolve(self.name, version)
        self._check_views(len(images), tta)
        for _ in range(3):
            size = loaded.image_size
            if images and images[0].shape[0] not in (size, decode_size(size, tta)):
                raise InputSizeChanged(self.name, loaded)
            try:
                futures = loaded.batcher.enqueue(expand(images, tta, size))
            except BatcherClosed:
                loaded = await self.manager.resolve(
                    self.name, version
                )  # swapped: take the new version
                continue
            except QueueFull:
                raise ConvserveError(
                    "queue_full",
                    f"model {self.name!r} has too many images waiting; retry shortly",
                    503,
                    {"Retry-After": "1"},
                ) from None
            self.metrics.queue_depth.labels(self.name).set(loaded.batcher.depth)
            rows = combine(list(await asyncio.gather(*futures)), tta)
            if loaded.bank is None:
                return Classified(loaded, rows)
            return Classified(loaded, *split_similarity(rows))
        raise ConvserveError(
            "model_unavailable", f"model {self.name!r} is being swapped", 503, {"Retry-After": "1"}
        )

    def _outcome(self, classified: Classified) -> Outcome:
        """Calibrate the answer and decide, per image, whether the version abstains: by
        the client's threshold on the top score when it gave one, else by the version's
        rule (the nearest training image's similarity, or the top score)."""
        loaded, rows, similarity = classified.loaded, classified.rows, classified.similarity
        self.served = str(loaded.version)
        self.metrics.images.labels(self.name, self.served).inc(len(rows))
        trust = version_trust(loaded.metadata, similarity is not None)
        if trust.temperature != 1.0 and rows:
            rows = list(calibrate(np.stack(rows), trust.temperature))
        if self.threshold is not None:
            scores = [float(row.max()) for row in rows]
            threshold: float | None = self.threshold
        elif similarity is not None:
            scores, threshold = similarity, trust.threshold
        else:
            scores, threshold = [float(row.max()) for row in rows], trust.threshold
        negative = (loaded.metadata.get("abstention") or {}).get("negative_class")
        # The negative class's index, looked up once (an ImageNet model has 1,000 names).
        names = loaded.class_names if negative is not None else []
        negative_index = names.index(negative) if negative in names else -1
        unknown = [
            self.abstain
            and (
                (threshold is not None and score < threshold) or int(row.argmax()) == negative_index
            )
            for row, score in zip(rows, scores, strict=True)
        ]
        self.unknown_count = sum(unknown)
        if any(unknown):
            self.metrics.unknown.labels(self.name, self.served).inc(sum(unknown))
        return Outcome(loaded, rows, unknown, similarity)


def ranked(
    loaded: LoadedVersion, row: np.ndarray, k: int | None = None
) -> list[tuple[int, str, float]]:
    """``(index, label, score)`` by score, highest first; the top ``k`` when given."""
    order = np.argsort(-row, kind="stable")
    if k is not None:
        order = order[:k]
    names = loaded.class_names
    return [(int(i), names[i], float(row[i])) for i in order]
