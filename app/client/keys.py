"""``convserve keys create|list|revoke`` and ``convserve audit``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.client.api import Client
from app.client.output import _table, err, out


def cmd_keys(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        if args.action == "create":
            limits = dict(args.quotas) if args.quotas else None
            made = client.create_key(args.name, args.scopes, args.models, limits)
            if args.json:
                print(json.dumps(made.model_dump()))
            else:
                out.print(made.key)
                err.print(
                    f"key {made.id} ({made.name}): {', '.join(made.scopes)}"
                    + (f", only {', '.join(made.models)}" if made.models else "")
                    + (
                        "; " + ", ".join(f"{k} {v}" for k, v in made.limits.items())
                        if made.limits
                        else ""
                    )
                    + ". It is shown this once: keep it now."
                )
            return 0
        if args.action == "revoke":
            revoked = client.revoke_key(args.key_id)
            if args.json:
                print(json.dumps(revoked.model_dump()))
            else:
                err.print(f"key {revoked.id} ({revoked.name}) revoked at {revoked.revoked_at}")
            return 0
        found = client.keys().keys
    if args.json:
        print(json.dumps([k.model_dump() for k in found]))
        return 0
    table = _table("id", "begins with", "name", "scopes", "models", "created", "revoked")
    for k in found:
        table.add_row(
            k.id,
            k.prefix,
            k.name,
            ", ".join(k.scopes),
            ", ".join(k.models) if k.models else "all",
            k.created_at,
            k.revoked_at or "",
        )
    table.show()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        page = client.audit(args.key, args.offset, args.limit)
    if args.json:
        print(json.dumps(page.model_dump()))
        return 0
    table = _table("when", "key", "method", "path", "status", "from", "scope")
    for e in page.items:
        table.add_row(
            e.at, e.key_id or "(none)", e.method, e.path, str(e.status), e.client or "", e.scope
        )
    table.show()
    err.print(f"{len(page.items)} of {page.total} (offset {page.offset})")
    return 0


QUOTAS = ("predict", "uploads", "jobs", "stored")


def _quota(text: str) -> tuple[str, str]:
    kind, _, value = text.partition("=")
    if kind not in QUOTAS or not value:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KIND=VALUE with KIND one of {', '.join(QUOTAS)}"
        )
    return kind, value


def add_key_commands(sub: Any, remote: argparse.ArgumentParser) -> None:
    k = sub.add_parser("keys", help="API keys with scopes: create, list, revoke")
    actions = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    k.set_defaults(func=cmd_keys)
    c = actions.add_parser("create", parents=[remote], help="a new key (printed once)")
    c.add_argument("name", help="what the key is for")
    c.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=["predict", "train", "admin"],
        required=True,
        help="predict (predictions and reads), train (also datasets, review, jobs),"
        " admin (everything); repeat for several",
    )
    c.add_argument(
        "--model", dest="models", action="append", help="only this model; repeat for several"
    )
    c.add_argument(
        "--quota",
        dest="quotas",
        action="append",
        type=_quota,
        metavar="KIND=VALUE",
        help="its own quota instead of the service's: predict=600/minute, uploads=50/day,"
        " jobs=5/day, stored=2GB; repeat for several",
    )
    actions.add_parser("list", parents=[remote], help="every key (never the key itself)")
    r = actions.add_parser("revoke", parents=[remote], help="revoke a key")
    r.add_argument("key_id", metavar="ID")

    a = sub.add_parser("audit", parents=[remote], help="who did what: train and admin actions")
    a.add_argument("--key", help="only this key's (an id)")
    a.add_argument("--offset", type=int, default=0)
    a.add_argument("--limit", type=int, default=50)
    a.set_defaults(func=cmd_audit)
