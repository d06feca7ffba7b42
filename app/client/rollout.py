"""``convserve rollout start|status|promote|abort``: a candidate version in front of a share
of the traffic (canary) or beside it (shadow), its live figures, promote or roll back."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from app.client.api import Client
from app.client.output import _table, err, out
from app.schemas import RolloutStatus


def show_rollout(status: RolloutStatus) -> None:
    ended = f" ({status.reason})" if status.reason else ""
    out.print(
        f"{status.model}: {status.mode} rollout of version {status.version} against version"
        f" {status.baseline}, share {status.share:g}: {status.status}{ended}"
    )
    table = _table(
        "version", "requests", "errors", "error rate", "p50 ms", "p99 ms", "compared", "agreement"
    )
    for version, f in status.figures.items():
        table.add_row(
            version + (" (candidate)" if int(version) == status.version else ""),
            str(f.requests),
            str(f.errors),
            "—" if f.error_rate is None else f"{f.error_rate:.1%}",
            str(f.latency_ms.get("p50") or "—"),
            str(f.latency_ms.get("p99") or "—"),
            str(f.compared),
            "—" if f.agreement is None else f"{f.agreement:.1%}",
        )
    table.show()
    err.print(f"figures summed over {status.replicas} replica(s)")


def cmd_rollout(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        if args.action == "start":
            guards: dict[str, Any] = {
                "max_error_rate": args.max_error_rate,
                "max_p99_ms": args.max_p99_ms,
                "min_agreement": args.min_agreement,
                "min_requests": args.min_requests,
            }
            status = client.start_rollout(args.model, args.version, args.mode, args.share, **guards)
        elif args.action == "promote":
            status = client.promote_rollout(args.model)
        elif args.action == "abort":
            status = client.abort_rollout(args.model)
        else:
            status = client.rollout(args.model)
            while args.watch and status.status == "running" and not args.json:
                show_rollout(status)
                time.sleep(args.watch)
                status = client.rollout(args.model)
    if args.json:
        print(json.dumps(status.model_dump()))
    else:
        show_rollout(status)
    return 0


def add_rollout_commands(sub: Any, remote: argparse.ArgumentParser) -> None:
    r = sub.add_parser("rollout", help="canary or shadow a version: start, status, promote, abort")
    actions = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    r.set_defaults(func=cmd_rollout)
    s = actions.add_parser("start", parents=[remote], help="begin a rollout of a version")
    s.add_argument("model")
    s.add_argument("version", type=int)
    s.add_argument("--mode", choices=["canary", "shadow"], required=True)
    s.add_argument(
        "--share",
        type=float,
        default=0.1,
        help="canary: the share the candidate answers; shadow: the share it also runs on",
    )
    s.add_argument("--max-error-rate", type=float, default=0.05, help="stop past this")
    s.add_argument("--max-p99-ms", type=float, help="stop when the candidate's p99 passes this")
    s.add_argument("--min-agreement", type=float, help="stop when agreement falls under this")
    s.add_argument("--min-requests", type=int, default=50, help="judge after this many")
    p = actions.add_parser("status", parents=[remote], help="the rollout and its live figures")
    p.add_argument("model")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="show it again every SECONDS")
    for name, words in (
        ("promote", "end it with the candidate serving"),
        ("abort", "end it with nothing changed"),
    ):
        actions.add_parser(name, parents=[remote], help=words).add_argument("model")
