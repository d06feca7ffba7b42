"""The FastAPI application: wiring only."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app.api import (
    architectures,
    datasets,
    finetune,
    health,
    keys,
    label_health,
    models,
    openapi,
    predict,
    retrain,
    review,
    rollout,
)
from app.api.audit import AuditLog
from app.api.deps import Auth
from app.api.drain import DrainMiddleware
from app.api.errors import convserve_error, install_error_handlers
from app.api.limits import BodySizeLimit
from app.api.quotas import Quotas
from app.config import Settings, get_settings
from app.console import routes as console
from app.errors import ConvserveError
from app.jobs.runner import store_for
from app.jobs.supervisor import JobSupervisor
from app.protocols import kserve_v2, tfserving
from app.serving.capture import Capturer
from app.serving.manager import ModelManager
from app.serving.metrics import ServiceMetrics
from app.serving.rollout import Rollouts
from app.shutdown import DrainState
from app.storage.factory import open_captures, open_datasets, open_registry
from app.storage.keys import KeyStore
from app.storage.rollouts import RolloutStore
from app.storage.sql import settings_database


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        settings.models_dir.mkdir(parents=True, exist_ok=True)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        registry = open_registry(settings)
        registry.clean_stale()
        datasets = open_datasets(settings, registry)
        metrics = ServiceMetrics()
        manager = ModelManager(settings, registry, metrics)
        captures = open_captures(settings, registry)
        manager.capture = Capturer(captures, metrics, settings.capture_queue_size)
        manager.capture.start()
        rollouts = RolloutStore(settings_database(settings))
        auth = Auth(KeyStore(settings_database(settings), settings.audit_days))
        manager.rollouts = Rollouts(rollouts, metrics)
        app.state.rollouts = manager.rollouts  # whose shadow runs tests wait on
        app.state.capture = manager.capture  # the writer, whose queue tests wait on
        await manager.start()
        await manager.rollouts.start(manager)
        jobs = store_for(settings)
        supervisor = JobSupervisor(settings, jobs, registry, manager, metrics, app.state.drain)
        if settings.run_jobs:
            await supervisor.start()
        try:
            yield {
                "registry": registry,
                "datasets": datasets,
                "captures": captures,
                "rollouts": rollouts,
                "auth": auth,
                "quotas": Quotas(settings),
                "metrics": metrics,
                "manager": manager,
                "jobs": jobs,
                "supervisor": supervisor,
            }
        finally:
            await supervisor.stop()
            await manager.stop()

    # /docs and /redoc come from app.api.openapi, with Swagger UI and ReDoc served locally.
    app = FastAPI(
        title="convserve", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    # Multipart framing adds a little to the files themselves.
    slack = 1024 * 1024
    app.add_middleware(
        BodySizeLimit,
        limits={
            "/finetune": settings.max_upload_bytes + slack,
            "/datasets/check": settings.max_upload_bytes + slack,
            "/datasets": settings.max_upload_bytes + slack,
            "/predict": settings.max_files_per_request * settings.max_image_bytes + slack,
        },
        # The protocols carry images as base64 (4/3 of their size) or as pixel tensors.
        prefix_limits={
            **dict.fromkeys(
                ("/v1/models/", "/v2/models/"),
                2 * settings.max_files_per_request * settings.max_image_bytes + slack,
            ),
            "/datasets/": settings.max_files_per_request * settings.max_image_bytes + slack,
        },
    )
    # Outermost: while the service drains, new requests are answered before anything else.
    app.state.drain = DrainState()
    app.add_middleware(AuditLog)
    app.add_middleware(DrainMiddleware, state=app.state.drain)
    install_error_handlers(app)
    app.add_exception_handler(ConvserveError, console.page_errors(convserve_error))
    routers = (
        predict,
        models,
        retrain,
        review,
        rollout,
        keys,
        architectures,
        finetune,
        datasets,
        label_health,
        health,
        tfserving,
        kserve_v2,
    )
    for module in (*routers, console):
        app.include_router(module.router)
    app.mount(console.STATIC_URL, console.static_files(), name="console-static")
    openapi.install(app)
    return app
