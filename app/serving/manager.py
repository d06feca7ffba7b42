"""The served models: loading, warm-up, dynamic batching and hot swap.

Each served model has at most one *active* loaded version. A request resolves the version
it will use once, synchronously, and queues its images on that version's batcher; a swap
replaces the active version only after the new one is loaded and warmed up, and retires the
old batcher, which finishes what it already holds. So requests in flight finish on the
version they started with, and none is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from setproctitle import setthreadtitle

from app.config import Settings
from app.data.images import ImageError, load_image
from app.errors import ConvserveError
from app.serving.batcher import Batcher, BatcherClosed, QueueFull
from app.serving.bootstrap import BOOTSTRAP_MODELS, bootstrap
from app.serving.metrics import ServiceMetrics
from app.serving.openvino_backend import IR_DIR, IR_FILE, convert_to_ir
from app.serving.precision import serving_precision
from app.serving.predictor import Predictor, make_predictor, warm_up
from app.serving.tta import VIEWS, combine, decode_size, expand
from app.storage.registry import ModelRegistry

log = logging.getLogger("convserve.models")


@dataclass
class LoadedVersion:
    name: str
    version: int
    metadata: dict[str, Any]
    predictor: Predictor
    batcher: Batcher
    precision_reason: str = ""  # why it serves at its precision

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])


@dataclass
class ModelState:
    name: str
    status: str = "loading"  # loading | ready | failed
    reason: str | None = None
    active: LoadedVersion | None = None
    # Older or newer versions asked for explicitly (?version=), loaded on demand.
    others: dict[int, LoadedVersion] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_error: str | None = None
    failed_version: int | None = None  # the last version that could not be loaded
    # When to try writing version 1 again after a failed bootstrap, and the last wait.
    bootstrap_retry_at: float | None = None
    bootstrap_wait: float = 0.0


MAX_BOOTSTRAP_WAIT = 3600.0
# What the operating system calls the service's threads (names are 15 characters at most).
THREAD_PREFIX = "cs-"


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


def _named_pool(workers: int, role: str) -> ThreadPoolExecutor:
    """A thread pool whose threads the operating system knows as ``cs-<role>`` (``top -H``,
    ``/proc/<pid>/task/*/comm``; the serving benchmark splits the server's CPU by them). A
    runtime's own worker threads take the name of the thread that started them: OpenVINO's
    are ``cs-load`` (they start while a version is compiled)."""
    return ThreadPoolExecutor(
        workers,
        thread_name_prefix=role,
        initializer=setthreadtitle,
        initargs=(f"{THREAD_PREFIX}{role}",),
    )


class ModelManager:
    MAX_EXTRA_VERSIONS = 2

    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: ServiceMetrics):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        # The built-in models (bootstrapped on first start), then every model the registry
        # holds: models created by training are served from their first version on.
        names = dict.fromkeys([*settings.served_models, *registry.names()])
        self.models: dict[str, ModelState] = {n: ModelState(n) for n in names}
        # Runtimes spread one batch over every core; two threads let the next batch be
        # handed over while one runs (a predictor's `parallelism` caps its own share).
        self._infer = _named_pool(2, "infer")
        self._loader = _named_pool(1, "load")
        # Pillow releases the GIL while decoding and resizing, so these run in parallel.
        self._decoder = _named_pool(settings.decode_threads, "decode")
        self._poller: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        for state in self.models.values():
            await self._load_initial(state)
        if self.settings.registry_poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for state in self.models.values():
            for loaded in [state.active, *state.others.values()]:
                if loaded is not None:
                    await loaded.batcher.close()
        for pool in (self._infer, self._loader, self._decoder):
            pool.shutdown(wait=True)

    async def _load_initial(self, state: ModelState) -> None:
        name = state.name
        loop = asyncio.get_running_loop()
        bootstrapping = False
        try:
            version = self.registry.active_version(name)
            if version is None:
                if name not in BOOTSTRAP_MODELS:
                    raise ConvserveError(
                        "model_unavailable",
                        f"model {name!r} has no version in the registry; train one first",
                    )
                log.info("bootstrapping %s", name)
                bootstrapping = True
                version = await loop.run_in_executor(
                    self._loader,
                    bootstrap,
                    self.registry,
                    name,
                    self.settings.pretrained,
                    self.settings.bootstrap_image_size,
                )
            loaded = await self._load(name, version)
            if self.registry.pointer(name) != version:
                self.registry.set_active(name, version)  # the pointer says what serves
        except Exception as exc:  # the model fails; the others still serve
            state.status, state.reason = "failed", _describe(exc)
            self.metrics.model_ready.labels(name).set(0)
            log.error("model %s failed to load: %s", name, state.reason)
            first_wait = self.settings.bootstrap_retry_seconds
            if bootstrapping and first_wait > 0 and self.settings.registry_poll_seconds > 0:
                wait = min(max(state.bootstrap_wait * 2, first_wait), MAX_BOOTSTRAP_WAIT)
                state.bootstrap_wait = wait
                state.bootstrap_retry_at = time.monotonic() + wait
                state.reason += f" (trying again in {wait:.0f} s)"
                log.info("will try to bootstrap %s again in %.0f s", name, wait)
            return
        state.bootstrap_retry_at, state.bootstrap_wait = None, 0.0
        self._install(state, loaded)

    async def _load(self, name: str, version: int) -> LoadedVersion:
        """Load and warm up a version in the loader thread; the event loop keeps serving."""
        metadata = self.registry.metadata(name, version)
        size = int(metadata["image_size"])
        path = self.registry.model_path(name, version)

        precision, why = serving_precision(self.settings.inference_precision, metadata)

        def load() -> tuple[Predictor, int]:
            predictor = make_predictor(path, size, self.settings.backend, precision)
            if predictor.backend == "openvino":  # its IR: built by one host, fetched by all
                self.registry.build_once(
                    name, version, f"{IR_DIR}/{IR_FILE}", lambda: convert_to_ir(path)
                )
            predictor.load()
            max_batch = self.settings.max_batch_size or predictor.batch_size
            warm_up(predictor, max_batch)
            return predictor, max_batch

        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        predictor, max_batch = await loop.run_in_executor(self._loader, load)
        note = getattr(predictor, "precision_note", None)
        if predictor.backend == "keras":
            why = "the Keras backend runs f32"
        elif note:
            why = f"{why}; serving {predictor.precision}: {note}"
        log.info(
            "loaded %s v%d in %.1fs (%s %s: %s)",
            name,
            version,
            time.perf_counter() - started,
            predictor.backend,
            predictor.precision,
            why,
        )

        def on_batch(n: int, seconds: float) -> None:
            self.metrics.batch_size.labels(name).observe(n)
            self.metrics.batch_seconds.labels(name).observe(seconds)

        batcher = Batcher(
            predictor.predict,
            self._infer,
            max_batch_size=max_batch,
            timeout=self.settings.batch_timeout_ms / 1000,
            max_queue=self.settings.max_queue_size,
            on_batch=on_batch,
            max_inflight=predictor.parallelism,
        )
        batcher.start()
        return LoadedVersion(name, version, metadata, predictor, batcher, why)

    def _install(self, state: ModelState, loaded: LoadedVersion) -> LoadedVersion | None:
        old = state.active
        state.active = loaded
        state.others.pop(loaded.version, None)
        state.status, state.reason = "ready", None
        self.metrics.active_version.labels(state.name).set(loaded.version)
        self.metrics.model_ready.labels(state.name).set(1)
        return old

    # -- lookups ---------------------------------------------------------------------------

    def state(self, name: str) -> ModelState:
        try:
            return self.models[name]
        except KeyError:
            raise ConvserveError(
                "model_not_found",
                f"no served model named {name!r}; served: {', '.join(self.models)}",
                404,
            ) from None

    def ready(self) -> bool:
        return all(s.status == "ready" for s in self.models.values())

    async def resolve(self, name: str, version: int | None = None) -> LoadedVersion:
        """The loaded version a request will use (the active one unless asked otherwise)."""
        state = self.state(name)
        if state.active is None:
            raise ConvserveError(
                "model_unavailable",
                f"model {name!r} is {state.status}" + (f": {state.reason}" if state.reason else ""),
                503,
                {"Retry-After": "5"},
            )
        if version is None or version == state.active.version:
            return state.active
        if version in state.others:
            return state.others[version]
        if not self.registry.exists(name, version):
            raise ConvserveError(
                "version_not_found", f"model {name!r} has no version {version}", 404
            )
        async with state.lock:
            if version not in state.others:
                loaded = await self._load(name, version)
                if len(state.others) >= self.MAX_EXTRA_VERSIONS:
                    oldest = next(iter(state.others))
                    await state.others.pop(oldest).batcher.close()
                state.others[version] = loaded
        return state.others[version]

    async def decode(
        self, blobs: list[bytes], filenames: list[str | None], size: int
    ) -> list[np.ndarray]:
        """Decode uploads off the event loop, in parallel; the first bad one raises its
        `ImageError`, naming the file."""
        loop = asyncio.get_running_loop()
        max_pixels = self.settings.max_image_pixels
        jobs = [loop.run_in_executor(self._decoder, load_image, b, size, max_pixels) for b in blobs]
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
        name: str,
        version: int | None,
        blobs: list[bytes],
        filenames: list[str | None],
        tta: str = "none",
    ) -> tuple[LoadedVersion, list[np.ndarray]]:
        """Decode encoded images at the input size of the version that serves them and
        classify them (with test-time augmentation ``tta``). A swap to a version with
        another input size while they were being decoded makes them decode again for the
        new one: the request is not dropped."""
        target = await self.resolve(name, version)
        self._check_views(name, len(blobs), tta)
        for _ in range(3):
            with target.batcher.expecting(len(blobs) * VIEWS[tta]):
                side = decode_size(target.image_size, tta)
                images = await self.decode(blobs, filenames, side)
            try:
                return await self.predict(name, version, images, target, tta)
            except InputSizeChanged as exc:
                target = exc.current
        raise ConvserveError(
            "model_unavailable", f"model {name!r} is being swapped", 503, {"Retry-After": "1"}
        )

    def _check_views(self, name: str, images: int, tta: str) -> None:
        """Refuse a request whose views alone would overflow the queue (it could never
        be taken), saying how many images fit."""
        limit = self.settings.max_queue_size
        if images * VIEWS[tta] > limit:
            raise ConvserveError(
                "too_many_files",
                f"tta={tta} classifies {VIEWS[tta]} views of each image: {images} images are"
                f" {images * VIEWS[tta]} for model {name!r}, over its queue of {limit};"
                f" send at most {limit // VIEWS[tta]}",
                413,
            )

    async def predict(
        self,
        name: str,
        version: int | None,
        images: list[np.ndarray],
        target: LoadedVersion | None = None,
        tta: str = "none",
    ) -> tuple[LoadedVersion, list[np.ndarray]]:
        """Classify ``images`` on ``target`` (resolved earlier by the caller), or on the
        version that replaced it if it was swapped out meanwhile; returns the version
        that did it and one row per image. With ``tta`` each image's views are classified
        and their probabilities averaged (images may then come at the crop size)."""
        loaded = target or await self.resolve(name, version)
        self._check_views(name, len(images), tta)
        for _ in range(3):
            size = loaded.image_size
            if images and images[0].shape[0] not in (size, decode_size(size, tta)):
                raise InputSizeChanged(name, loaded)
            try:
                futures = loaded.batcher.enqueue(expand(images, tta, size))
            except BatcherClosed:
                loaded = await self.resolve(name, version)  # swapped: take the new version
                continue
            except QueueFull:
                raise ConvserveError(
                    "queue_full",
                    f"model {name!r} has too many images waiting; retry shortly",
                    503,
                    {"Retry-After": "1"},
                ) from None
            self.metrics.queue_depth.labels(name).set(loaded.batcher.depth)
            rows = await asyncio.gather(*futures)
            return loaded, combine(list(rows), tta)
        raise ConvserveError(
            "model_unavailable", f"model {name!r} is being swapped", 503, {"Retry-After": "1"}
        )

    # -- changes ---------------------------------------------------------------------------

    async def activate(self, name: str, version: int, write_pointer: bool = True) -> ModelState:
        """Load and warm up ``version``, then switch to it. A failed load leaves the
        current version serving and raises ``activation_failed``.

        The pointer is written only if nobody moved it since this call began: of two
        activations at once, on this replica or any other sharing the registry, the first
        to finish wins and the other gets 409 ``activation_conflict`` (and then follows
        the winner, like every replica)."""
        state = self.state(name)
        if not self.registry.exists(name, version):
            raise ConvserveError(
                "version_not_found", f"model {name!r} has no version {version}", 404
            )
        seen = self.registry.pointer_etag(name) if write_pointer else None
        async with state.lock:
            if state.active is not None and state.active.version == version:
                if write_pointer:
                    self.registry.set_active(name, version, if_match=seen)
                return state
            loaded = state.others.get(version)
            if loaded is None:
                try:
                    loaded = await self._load(name, version)
                except Exception as exc:
                    state.last_error = f"version {version}: {_describe(exc)}"
                    state.failed_version = version
                    log.error("activation of %s v%d failed: %s", name, version, exc)
                    current = state.active.version if state.active else None
                    raise ConvserveError(
                        "activation_failed",
                        f"version {version} of {name!r} could not be loaded "
                        f"({_describe(exc)}); version {current} still serves",
                        409,
                    ) from exc
            if write_pointer:
                try:
                    self.registry.set_active(name, version, if_match=seen)
                except ConvserveError:
                    if version not in state.others:
                        await loaded.batcher.close()
                    raise
            old = self._install(state, loaded)
            state.last_error = None
        if old is not None:
            await old.batcher.close()
        log.info("%s now serves version %d", name, version)
        return state

    async def refresh(self, name: str, version: int) -> bool:
        """Load the active ``version`` again and swap it in, when its metadata gained a
        precision study after it was loaded (under ``auto`` it now serves the precision
        the study chose). Returns whether it was reloaded."""
        state = self.models.get(name)
        if state is None:
            return False
        async with state.lock:
            active = state.active
            if active is None or active.version != version:
                return False
            study = self.registry.metadata(name, version).get("precision_study")
            if study == active.metadata.get("precision_study"):
                return False
            loaded = await self._load(name, version)
            old = self._install(state, loaded)
        if old is not None:
            await old.batcher.close()
        log.info("%s version %d reloaded after its precision study", name, version)
        return True

    async def delete(self, name: str, version: int) -> ModelState:
        state = self.state(name)
        async with state.lock:
            self.registry.delete_version(name, version)
            extra = state.others.pop(version, None)
        if extra is not None:
            await extra.batcher.close()
        return state

    async def add_model(self, name: str) -> ModelState:
        """Serve a model the registry has and this manager does not yet (one created by
        training, here or by another replica); its active version is loaded now."""
        state = self.models.get(name)
        if state is None:
            state = self.models[name] = ModelState(name)
            async with state.lock:
                await self._load_initial(state)
            log.info("now serving new model %s (%s)", name, state.status)
        return state

    async def remove_model(self, name: str) -> None:
        """Stop serving ``name`` (its registry folder is gone); requests already queued
        on it finish."""
        state = self.models.pop(name, None)
        if state is None:
            return
        for loaded in [state.active, *state.others.values()]:
            if loaded is not None:
                await loaded.batcher.close()
        for metric in (self.metrics.active_version, self.metrics.model_ready):
            with contextlib.suppress(KeyError):
                metric.remove(name)
        log.info("stopped serving model %s", name)

    async def delete_model(self, name: str) -> None:
        """Delete a whole model from the registry and stop serving it."""
        state = self.state(name)
        async with state.lock:
            self.registry.delete_model(name)
        await self.remove_model(name)

    async def _follow_registry_names(self) -> None:
        """Serve models another process created; drop those another process deleted."""
        names = set(self.registry.names())
        for name in sorted(names - set(self.models)):
            if self.registry.versions(name):
                await self.add_model(name)
        for name in list(self.models):
            if name not in names and name not in self.settings.served_models:
                await self.remove_model(name)

    async def _retry_failed(self, state: ModelState, version: int) -> None:
        try:
            await self.activate(state.name, version, write_pointer=False)
        except ConvserveError:
            state.failed_version = version  # do not retry the same version every poll
            raise

    async def _poll(self) -> None:
        """Follow activations made by another replica sharing the registry, and try again
        to write version 1 of a built-in model whose bootstrap failed."""
        while True:
            await asyncio.sleep(self.settings.registry_poll_seconds)
            try:
                await self._follow_registry_names()
            except Exception:
                log.exception("registry poll could not list the models")
            for name, state in list(self.models.items()):
                try:
                    pointed = self.registry.active_version(name)
                    retry_at = state.bootstrap_retry_at
                    if pointed is None and retry_at is not None and time.monotonic() >= retry_at:
                        state.bootstrap_retry_at = None
                        async with state.lock:  # not at the same time as an activation
                            await self._load_initial(state)  # version 1, or a longer wait
                        continue
                    if pointed is None or pointed == state.failed_version:
                        continue
                    if state.active is None:
                        # A model that had nothing to serve (or failed) gets a version.
                        await self._retry_failed(state, pointed)
                    elif pointed != state.active.version:
                        await self.activate(name, pointed, write_pointer=False)
                    elif "precision_study" not in state.active.metadata:
                        # A study that ran after the version was loaded (after its job).
                        await self.refresh(name, pointed)
                except ConvserveError as exc:
                    log.warning("could not follow %s to its new version: %s", name, exc)
                except Exception:
                    log.exception("registry poll failed for %s", name)


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return message.splitlines()[0][:300]
