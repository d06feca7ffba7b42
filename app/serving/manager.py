"""The served models and their versions: which version each model serves, and hot swap.

Loading a version is `app.serving.loader`'s; classifying a request's images is
`app.serving.inference`'s; following a shared registry is `app.serving.follower`'s.

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
from dataclasses import dataclass, field

from app.config import Settings
from app.errors import ConvserveError
from app.serving.bootstrap import BOOTSTRAP_MODELS, bootstrap
from app.serving.capture import Capturer
from app.serving.follower import RegistryFollower
from app.serving.loader import LoadedVersion, VersionLoader, describe, named_pool
from app.serving.metrics import ServiceMetrics
from app.serving.rollout import Rollouts
from app.storage.registry import ModelRegistry

log = logging.getLogger("convserve.models")


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
        self.loader = VersionLoader(settings, registry, metrics)
        # Pillow releases the GIL while decoding and resizing, so these run in parallel.
        self.decoder = named_pool(settings.decode_threads, "decode")
        # Grad-CAM runs on the Keras model, one request at a time, beside serving.
        self.explainer = named_pool(1, "explain")
        # Keeps the predictions a model's capture rule asks for (none until the service
        # gives it a store: app.main).
        self.capture = Capturer(None, metrics)
        # The rollouts this replica follows (none until the service gives it a store).
        self.rollouts = Rollouts(None, metrics)
        self._poller: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        for state in self.models.values():
            await self.load_initial(state)
        if self.settings.registry_poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(RegistryFollower(self).run())

    async def stop(self) -> None:
        await self.rollouts.stop()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for state in self.models.values():
            for loaded in [state.active, *state.others.values()]:
                if loaded is not None:
                    await loaded.batcher.close()
        self.loader.shutdown()
        self.decoder.shutdown(wait=True)
        self.explainer.shutdown(wait=True)
        await asyncio.to_thread(self.capture.stop)

    async def load_initial(self, state: ModelState) -> None:
        """Serve the model's active version (writing version 1 of a built-in model first);
        a failure marks the model failed and the others still serve."""
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
                    self.loader.loader,
                    bootstrap,
                    self.registry,
                    name,
                    self.settings.pretrained,
                    self.settings.bootstrap_image_size,
                )
            loaded = await self.loader.load(name, version)
            if self.registry.pointer(name) != version:
                self.registry.set_active(name, version)  # the pointer says what serves
        except Exception as exc:  # the model fails; the others still serve
            state.status, state.reason = "failed", describe(exc)
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
                loaded = await self.loader.load(name, version)
                if len(state.others) >= self.MAX_EXTRA_VERSIONS:
                    oldest = next(iter(state.others))
                    await state.others.pop(oldest).batcher.close()
                state.others[version] = loaded
        return state.others[version]

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
                    loaded = await self.loader.load(name, version)
                except Exception as exc:
                    state.last_error = f"version {version}: {describe(exc)}"
                    state.failed_version = version
                    log.error("activation of %s v%d failed: %s", name, version, exc)
                    current = state.active.version if state.active else None
                    raise ConvserveError(
                        "activation_failed",
                        f"version {version} of {name!r} could not be loaded "
                        f"({describe(exc)}); version {current} still serves",
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
            loaded = await self.loader.load(name, version)
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
                await self.load_initial(state)
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
