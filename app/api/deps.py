"""Typed dependencies: the settings and the heavy objects the lifespan creates."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings, get_settings
from app.errors import ConvserveError
from app.jobs.store import JobStore
from app.jobs.supervisor import JobSupervisor
from app.serving.manager import ModelManager
from app.serving.metrics import ServiceMetrics
from app.storage.captures import CaptureStore
from app.storage.datasets import DatasetStore
from app.storage.registry import ModelRegistry
from app.storage.rollouts import RolloutStore


async def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.state.manager
    return manager


async def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.state.registry
    return registry


async def get_datasets(request: Request) -> DatasetStore:
    datasets: DatasetStore = request.state.datasets
    return datasets


async def get_captures(request: Request) -> CaptureStore:
    captures: CaptureStore = request.state.captures
    return captures


async def get_rollouts(request: Request) -> RolloutStore:
    rollouts: RolloutStore = request.state.rollouts
    return rollouts


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.state.metrics
    return metrics


async def get_jobs(request: Request) -> JobStore:
    jobs: JobStore = request.state.jobs
    return jobs


async def get_supervisor(request: Request) -> JobSupervisor:
    supervisor: JobSupervisor = request.state.supervisor
    return supervisor


async def current_settings(request: Request) -> Settings:
    """The settings the app was created with (``create_app(settings)``), else the
    environment's. Async, as are the getters above: FastAPI runs a plain ``def``
    dependency in its thread pool, a hop per request that the hot path does not need."""
    settings: Settings | None = getattr(request.app.state, "settings", None)
    return settings if settings is not None else get_settings()


SettingsDep = Annotated[Settings, Depends(current_settings)]
Jobs = Annotated[JobStore, Depends(get_jobs)]
Supervisor = Annotated[JobSupervisor, Depends(get_supervisor)]
Manager = Annotated[ModelManager, Depends(get_manager)]
Registry = Annotated[ModelRegistry, Depends(get_registry)]
Metrics = Annotated[ServiceMetrics, Depends(get_metrics)]
Datasets = Annotated[DatasetStore, Depends(get_datasets)]
Captures = Annotated[CaptureStore, Depends(get_captures)]
Rollouts = Annotated[RolloutStore, Depends(get_rollouts)]


# Declared as a security scheme, so the OpenAPI document marks the admin operations.
_bearer = HTTPBearer(
    scheme_name="bearer",
    description="CONVSERVE_API_KEY, needed by admin operations when it is set",
    auto_error=False,
)


async def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin endpoints need ``Authorization: Bearer <CONVSERVE_API_KEY>`` when it is set."""
    if not settings.api_key:
        return
    token = credentials.credentials.strip() if credentials is not None else ""
    if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
        raise ConvserveError(
            "unauthorized",
            "this endpoint needs an 'Authorization: Bearer <api key>' header with the right key",
            401,
            {"WWW-Authenticate": "Bearer"},
        )


Admin = Depends(require_admin)
