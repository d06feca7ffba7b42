"""``/models/{name}/rollout``: put a candidate version in front of a share of the traffic
(canary) or beside it (shadow), watch its live figures, promote it or roll back."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from app.api.deps import Admin, Manager, Read, Rollouts
from app.errors import ConvserveError
from app.names import NAME_PATTERN
from app.schemas import RolloutRequest, RolloutStatus, VersionFigures
from app.serving.manager import ModelManager
from app.serving.rollout import Figures
from app.storage.rollouts import GUARD_DEFAULTS, RUNNING, RolloutStore, no_rollout

router = APIRouter(prefix="/models", tags=["rollouts"])
ModelName = PathParam(pattern=NAME_PATTERN.pattern, description="the model's name")


async def status(manager: ModelManager, store: RolloutStore, name: str) -> RolloutStatus:
    """The model's running (or last) rollout with its figures summed across replicas."""
    await manager.rollouts.sync(manager)  # this replica's latest figures first
    row = await asyncio.to_thread(store.latest, name)
    if row is None:
        raise ConvserveError("rollout_not_found", f"model {name!r} has had no rollout", 404)
    totals = await asyncio.to_thread(manager.rollouts.totals, row["id"])
    for version in (row["baseline"], row["version"]):
        totals.setdefault(int(version), Figures())
    figures = {str(v): VersionFigures(**totals[v].summary()) for v in sorted(totals)}
    replicas = await asyncio.to_thread(store.replicas, row["id"])
    return RolloutStatus(**row, replicas=replicas, figures=figures)


@router.put("/{name}/rollout", response_model=RolloutStatus, dependencies=[Admin])
async def start_rollout(
    body: RolloutRequest, manager: Manager, store: Rollouts, name: str = ModelName
) -> RolloutStatus:
    """Begin a rollout of ``version`` (loaded first; a rollout already running is replaced).
    Canary: ``share`` of the requests that pin no version are answered by it. Shadow: it
    also runs on ``share`` of them, off the request path; clients get the active version's
    answers. The guards stop it when a bound is passed."""
    state = manager.state(name)
    if state.active is None:
        raise ConvserveError("model_unavailable", f"model {name!r} serves no version", 503)
    if body.version == state.active.version:
        raise ConvserveError(
            "version_is_active",
            f"version {body.version} already serves {name!r}: roll out another one",
            409,
        )
    try:
        await manager.resolve(name, body.version)  # 404, or loads it before any traffic
    except ConvserveError as exc:
        if exc.status == 404:
            raise
        raise ConvserveError(
            "activation_failed", f"version {body.version} could not be loaded: {exc.message}", 409
        ) from exc
    guards = {k: getattr(body, k) for k in GUARD_DEFAULTS}
    await asyncio.to_thread(
        store.start, name, body.version, state.active.version, body.mode, body.share, guards
    )
    return await status(manager, store, name)


@router.get("/{name}/rollout", response_model=RolloutStatus, dependencies=[Read])
async def get_rollout(manager: Manager, store: Rollouts, name: str = ModelName) -> RolloutStatus:
    """The running rollout (or the last one, with why it ended) and, per version, its
    requests, errors, latency percentiles, agreement with the active version and unknown
    rate, summed across replicas."""
    manager.state(name)
    return await status(manager, store, name)


async def _running(manager: ModelManager, store: RolloutStore, name: str) -> dict[str, Any]:
    manager.state(name)
    row = await asyncio.to_thread(store.latest, name)
    if row is None or row["status"] != RUNNING:
        raise no_rollout(name)
    return row


@router.post("/{name}/rollout/promote", response_model=RolloutStatus, dependencies=[Admin])
async def promote_rollout(
    manager: Manager, store: Rollouts, name: str = ModelName
) -> RolloutStatus:
    """End the rollout with its candidate serving every request."""
    row = await _running(manager, store, name)
    await manager.activate(name, int(row["version"]))
    await asyncio.to_thread(store.end, row["id"], "promoted", "promoted by an admin")
    return await status(manager, store, name)


@router.delete("/{name}/rollout", response_model=RolloutStatus, dependencies=[Admin])
async def abort_rollout(manager: Manager, store: Rollouts, name: str = ModelName) -> RolloutStatus:
    """End the rollout with nothing changed: the active version serves every request."""
    row = await _running(manager, store, name)
    await asyncio.to_thread(store.end, row["id"], "aborted", "aborted by an admin")
    return await status(manager, store, name)
