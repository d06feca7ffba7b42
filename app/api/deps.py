"""Typed dependencies: the settings and the heavy objects the lifespan creates."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.quotas import Quotas, check_stored, parse_size
from app.config import Settings, get_settings
from app.errors import ConvserveError
from app.jobs.store import JobStore
from app.jobs.supervisor import JobSupervisor
from app.serving.manager import ModelManager
from app.serving.metrics import ServiceMetrics
from app.storage.captures import CaptureStore
from app.storage.datasets import DatasetStore
from app.storage.keys import GRANTS, SCOPES, KeyStore
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


async def get_keys(request: Request) -> KeyStore:
    auth: Auth = request.state.auth
    return auth.keys


async def get_auth(request: Request) -> Auth:
    auth: Auth = request.state.auth
    return auth


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
Keys = Annotated[KeyStore, Depends(get_keys)]


# Declared as a security scheme, so the OpenAPI document marks the operations that need a key.
bearer = HTTPBearer(
    scheme_name="bearer",
    description="an API key (CONVSERVE_API_KEY, or one made with POST /keys) with the"
    " operation's scope; needed once CONVSERVE_API_KEY is set or a key exists",
    auto_error=False,
)
# The console's read cookie (POST /session): the key, accepted for GET and HEAD only, so a
# page can show images and follow a job's events; never for an action.
KEY_COOKIE = "convserve_key"
SAFE_METHODS = ("GET", "HEAD")
KEY_CACHE_SECONDS = 30.0  # a key revoked on another replica is refused within this
KEYS_EXIST_SECONDS = 5.0


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a key's id ("bootstrap": CONVSERVE_API_KEY; None: no key on an
    open service), what it may do, and the models it is limited to (None: all)."""

    key_id: str | None
    scopes: frozenset[str]
    models: tuple[str, ...] | None = None


OPEN = Caller(None, frozenset(SCOPES))


class Auth:
    """The keys of the service's database, remembered for a while per replica (a check is
    an Argon2 hash)."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._known: dict[str, tuple[dict[str, Any] | None, float]] = {}
        self._exist = (False, 0.0)

    def keys_exist(self) -> bool:
        exist, until = self._exist
        if time.monotonic() >= until:
            exist = self.keys.active() > 0
            self._exist = (exist, time.monotonic() + KEYS_EXIST_SECONDS)
        return exist

    def lookup(self, token: str) -> dict[str, Any] | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = self._known.get(digest)
        if found is not None and time.monotonic() < found[1]:
            return found[0]
        row = self.keys.verify(token)
        self._known[digest] = (row, time.monotonic() + KEY_CACHE_SECONDS)
        return row

    def forget(self) -> None:
        """After a key was made or revoked here: this replica knows at once."""
        self._known.clear()
        self._exist = (False, 0.0)


def _unauthorized() -> ConvserveError:
    return ConvserveError(
        "unauthorized",
        "this endpoint needs an 'Authorization: Bearer <api key>' header with a valid key",
        401,
        {"WWW-Authenticate": "Bearer"},
    )


def check_model(caller: Caller, model: str | None) -> None:
    """403 when ``caller``'s key is limited to other models than ``model``."""
    if caller.models is not None and model is not None and model not in caller.models:
        raise ConvserveError(
            "model_not_allowed",
            f"this key is limited to the models {', '.join(caller.models)}; not {model!r}",
            403,
        )


def _model_of(request: Request, settings: Settings) -> str | None:
    """The model a request acts on, where its path or query names it."""
    path = request.url.path
    if path.startswith(("/models/", "/v1/models/", "/v2/models/", "/console/models/")):
        name = request.path_params.get("name")
        if name is not None:
            return str(name).split(":", 1)[0]
    if path == "/predict":
        return request.query_params.get("model") or settings.default_model
    return request.query_params.get("model")


async def identify(
    auth: Auth, settings: Settings, token: str
) -> tuple[Caller, dict[str, Any] | None] | None:
    """Who ``token`` is: every scope on an open service (no key configured), the bootstrap
    key, or a stored key (with its record); None for no key or a wrong one on a keyed
    service."""
    if not settings.api_key and not await asyncio.to_thread(auth.keys_exist):
        return OPEN, None
    bootstrap = settings.api_key
    if bootstrap and token and hmac.compare_digest(token.encode(), bootstrap.encode()):
        return Caller("bootstrap", frozenset(SCOPES)), None
    row = await asyncio.to_thread(auth.lookup, token) if token else None
    if row is None:
        return None
    granted = frozenset().union(*(GRANTS[s] for s in row["scopes"]))
    models = tuple(row["models"]) if row["models"] else None
    return Caller(row["id"], granted, models), row


def _who(request: Request, caller: Caller) -> str:
    """The caller a quota counts: its key, or its address without one."""
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    return f"address:{request.client.host if request.client else 'unknown'}"


def _spend(request: Request, quota: str | None, caller: Caller, row: dict[str, Any] | None) -> None:
    """Count the request against the caller's quota of ``quota`` (429 past it)."""
    if quota is None:
        return
    quotas: Quotas = request.state.quotas
    quotas.spend(quota, _who(request, caller), (row or {}).get("limits"))


async def _check_stored(
    request: Request, settings: Settings, caller: Caller, row: dict[str, Any] | None
) -> None:
    """Refuse an upload that would take the caller past its bytes-stored quota (507), by
    the size it declares, before it is read; `charge_stored` counts it once kept."""
    own = ((row or {}).get("limits") or {}).get("stored")
    limit = parse_size(own) if own else settings.stored_bytes
    who = _who(request, caller)
    request.state.stored_by = who
    if limit is None:
        return
    auth: Auth = request.state.auth
    used = await asyncio.to_thread(auth.keys.stored, who)
    length = request.headers.get("content-length", "")
    check_stored(used, int(length) if length.isdigit() else 0, limit)


def charge_stored(request: Request, dataset: str) -> None:
    """After an upload was kept in ``dataset``: its size counts against the caller."""
    who = getattr(request.state, "stored_by", None)
    length = request.headers.get("content-length", "")
    if who is not None and length.isdigit():
        auth: Auth = request.state.auth
        auth.keys.charge(who, dataset, int(length))


def refund_stored(request: Request, dataset: str) -> None:
    auth: Auth = request.state.auth
    auth.keys.refund(dataset)


def require(
    scope: str, public: str | None = None, quota: str | None = None, stores: bool = False
) -> Any:
    """A dependency: the request needs a key with ``scope`` (once keys are on), limited to
    no other model than the one it acts on; none while the setting named ``public`` is
    true. It counts against the caller's ``quota`` (`app.api.quotas`), and an upload that
    ``stores`` against its bytes stored. Actions and admin reads go to the audit log. A
    GET or HEAD may carry the key in the console's read cookie instead of the header."""

    async def check(
        request: Request,
        settings: SettingsDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        auth: Auth = request.state.auth
        token = credentials.credentials.strip() if credentials is not None else ""
        safe = request.method in SAFE_METHODS
        if not token and safe:
            token = request.cookies.get(KEY_COOKIE, "").strip()
        # Train and admin actions, and the admin's reads (exports, keys, the log) are audited.
        audited = scope == "admin" or (scope == "train" and not safe)
        if public is not None and getattr(settings, public):
            # Open to anyone; a valid key still counts as itself for the quota.
            row: dict[str, Any] | None = (
                await asyncio.to_thread(auth.lookup, token) if token.startswith("cs_") else None
            )
            caller = Caller(row["id"], frozenset()) if row is not None else OPEN
            _spend(request, quota, caller, row)
            return OPEN
        if audited:
            request.state.audit = (None, scope)  # recorded with the answer's status
        found = await identify(auth, settings, token)
        if found is None:
            raise _unauthorized()
        caller, row = found
        if audited:
            request.state.audit = (caller.key_id, scope)
        if scope not in caller.scopes:
            raise ConvserveError(
                "forbidden",
                f"this needs a key with the {scope!r} scope; this key has"
                f" {', '.join(s for s in SCOPES if s in caller.scopes)}",
                403,
            )
        check_model(caller, _model_of(request, settings))
        _spend(request, quota, caller, row)
        if stores:
            await _check_stored(request, settings, caller, row)
        return caller

    return Depends(check)


Admin = require("admin")
Train = require("train")
TrainCheck = require("train", quota="uploads")  # counts against the caller's uploads a day
TrainUpload = require("train", quota="uploads", stores=True)  # and its bytes stored
TrainJob = require("train", quota="jobs", stores=True)  # its jobs a day (and an archive kept)
# Predictions are open to anyone unless CONVSERVE_PUBLIC_PREDICTIONS=false; each counts
# against the caller's predictions a minute either way.
Predict = require("predict", public="public_predictions", quota="predict")
# What a predicting client reads (the protocols' model metadata): open as predictions are.
PredictRead = require("predict", public="public_predictions")
# Models, jobs, datasets, rollouts and reports: a key once keys are on, unless
# CONVSERVE_PUBLIC_READS=true.
Read = require("predict", public="public_reads")
# The users' photos (dataset images, captured images, validation samples): a train key.
ReadPhotos = require("train")


AuthDep = Annotated[Auth, Depends(get_auth)]
