"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import Manager, Metrics

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(manager: Manager) -> JSONResponse:
    """200 when every served model is loaded and warmed up, else 503 with the reasons."""
    models = {
        name: state.status if state.reason is None else f"{state.status}: {state.reason}"
        for name, state in manager.models.items()
    }
    ready = manager.ready()
    return JSONResponse(
        {"ready": ready, "models": models},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "5"},
    )


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus_metrics(manager: Manager, metrics: Metrics) -> Response:
    for name, state in manager.models.items():
        depth = state.active.batcher.depth if state.active is not None else 0
        metrics.queue_depth.labels(name).set(depth)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
