"""Follows the model registry that replicas share: serves models another process created,
drops those it deleted, switches to the version another process activated, reloads a
version whose precision study arrived, and tries again to bootstrap a built-in model."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from app.errors import ConvserveError

if TYPE_CHECKING:
    from app.serving.manager import ModelManager, ModelState

log = logging.getLogger("convserve.models")


class RegistryFollower:
    """Polls the registry every ``registry_poll_seconds`` on behalf of a `ModelManager`."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    async def _follow_registry_names(self) -> None:
        """Serve models another process created; drop those another process deleted."""
        names = set(self.manager.registry.names())
        for name in sorted(names - set(self.manager.models)):
            if self.manager.registry.versions(name):
                await self.manager.add_model(name)
        for name in list(self.manager.models):
            if name not in names and name not in self.manager.settings.served_models:
                await self.manager.remove_model(name)

    async def _retry_failed(self, state: ModelState, version: int) -> None:
        try:
            await self.manager.activate(state.name, version, write_pointer=False)
        except ConvserveError:
            state.failed_version = version  # do not retry the same version every poll
            raise

    async def run(self) -> None:
        """Follow activations made by another replica sharing the registry, and try again
        to write version 1 of a built-in model whose bootstrap failed."""
        while True:
            await asyncio.sleep(self.manager.settings.registry_poll_seconds)
            try:
                await self._follow_registry_names()
            except Exception:
                log.exception("registry poll could not list the models")
            for name, state in list(self.manager.models.items()):
                try:
                    pointed = self.manager.registry.active_version(name)
                    retry_at = state.bootstrap_retry_at
                    if pointed is None and retry_at is not None and time.monotonic() >= retry_at:
                        state.bootstrap_retry_at = None
                        async with state.lock:  # not at the same time as an activation
                            await self.manager.load_initial(state)  # version 1, or a longer wait
                        continue
                    if pointed is None or pointed == state.failed_version:
                        continue
                    if state.active is None:
                        # A model that had nothing to serve (or failed) gets a version.
                        await self._retry_failed(state, pointed)
                    elif pointed != state.active.version:
                        await self.manager.activate(name, pointed, write_pointer=False)
                    elif "precision_study" not in state.active.metadata:
                        # A study that ran after the version was loaded (after its job).
                        await self.manager.refresh(name, pointed)
                except ConvserveError as exc:
                    log.warning("could not follow %s to its new version: %s", name, exc)
                except Exception:
                    log.exception("registry poll failed for %s", name)
