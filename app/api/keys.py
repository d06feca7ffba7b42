"""``/keys`` and ``/audit``: API keys with scopes (made, listed, revoked by an admin) and the
log of what was done with them."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from app.api.deps import KEY_COOKIE, Admin, AuthDep, Keys, SettingsDep, bearer, identify
from app.errors import ConvserveError
from app.schemas import AuditPage, KeyCreated, KeyInfo, KeyList, NewKey, Whoami
from app.storage.keys import SCOPES

router = APIRouter(tags=["keys"])


@router.post("/keys", status_code=201, response_model=KeyCreated, dependencies=[Admin])
async def create_key(body: NewKey, response: Response, keys: Keys, auth: AuthDep) -> Any:
    """Make a key with ``scopes`` (``predict``: predictions and reads; ``train``: also
    datasets, review and jobs; ``admin``: everything), limited to ``models`` if given.
    The key is in this answer only: it is stored as a hash."""
    row, token = await asyncio.to_thread(
        keys.create,
        body.name,
        body.scopes,
        body.models,
        body.limits.model_dump(exclude_none=True) if body.limits else None,
    )
    auth.forget()
    response.headers["Location"] = f"/keys/{row['id']}"
    return KeyCreated(**row, key=token)


@router.get("/keys/me", response_model=Whoami)
async def whoami(
    request: Request,
    settings: SettingsDep,
    auth: AuthDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Whoami:
    """What the key sent may do (the console shows only that): its scopes and models; no
    scope without a key once keys are on; every scope on an open service. 401 for a key
    that is wrong or revoked."""
    token = credentials.credentials.strip() if credentials is not None else ""
    keys_on = bool(settings.api_key) or await asyncio.to_thread(auth.keys_exist)
    if not token and keys_on:
        return Whoami(key_id=None, scopes=[], models=None, keys_on=True)
    found = await identify(auth, settings, token)
    if found is None:
        raise ConvserveError(
            "unauthorized", "this key is wrong or revoked", 401, {"WWW-Authenticate": "Bearer"}
        )
    caller, _ = found
    return Whoami(
        key_id=caller.key_id,
        scopes=[s for s in SCOPES if s in caller.scopes],
        models=list(caller.models) if caller.models is not None else None,
        keys_on=keys_on,
    )


@router.post(
    "/session",
    status_code=204,
    responses={401: {"description": "no key, or a wrong or revoked one"}},
)
async def open_session(
    request: Request,
    settings: SettingsDep,
    auth: AuthDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    """The console's read cookie: the key sent (any scope) comes back as an HttpOnly,
    SameSite=Strict cookie that the service accepts for GET and HEAD only, so the pages,
    their images and a job's event stream load with it; every action still needs the
    ``Authorization`` header. Ends with the browser, or with ``DELETE /session``."""
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token or await identify(auth, settings, token) is None:
        raise ConvserveError(
            "unauthorized",
            "send the key as 'Authorization: Bearer <api key>'; this one is missing, wrong"
            " or revoked",
            401,
            {"WWW-Authenticate": "Bearer"},
        )
    response = Response(status_code=204)
    response.set_cookie(
        KEY_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.delete("/session", status_code=204)
async def close_session() -> Response:
    """Forget the console's read cookie."""
    response = Response(status_code=204)
    response.delete_cookie(KEY_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/keys", response_model=KeyList, dependencies=[Admin])
def list_keys(keys: Keys) -> KeyList:
    """Every key: its id, prefix, name, scopes, models and whether it is revoked (never
    the key itself)."""
    return KeyList(keys=[KeyInfo(**k) for k in keys.page()])


@router.delete("/keys/{key_id}", response_model=KeyInfo, dependencies=[Admin])
async def revoke_key(key_id: str, keys: Keys, auth: AuthDep) -> KeyInfo:
    """Revoke a key: refused at once on this replica, within 30 seconds on the others."""
    row = await asyncio.to_thread(keys.revoke, key_id)
    auth.forget()
    return KeyInfo(**row)


@router.get("/audit", response_model=AuditPage, dependencies=[Admin])
def audit(
    keys: Keys,
    key_id: str | None = Query(None, description="only this key's actions"),
    offset: int = Query(0, ge=0, le=2**31 - 1),
    limit: int = Query(100, ge=1, le=1000),
) -> AuditPage:
    """Every train and admin action, newest first: when, which key, what (method and
    path), from where, the answer's status, and the scope it needed."""
    items, total = keys.audit(key_id, offset, limit)
    return AuditPage(items=items, total=total, offset=offset, limit=limit)
