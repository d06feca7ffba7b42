"""The ``convserve`` commands of the learning loop: ``capture`` (a model's capture rule),
``review`` (the queue of kept predictions) and ``health`` (a dataset version's label
health). ``retrain`` is beside ``finetune``, in `app.client.cli`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.markup import escape

from app.client.api import Client
from app.client.output import Failure, _table, err, out


def _print(args: argparse.Namespace, value: Any) -> bool:
    """Print ``value`` as JSON when asked; true when it was."""
    if args.json:
        print(json.dumps(value.model_dump() if hasattr(value, "model_dump") else value))
    return bool(args.json)


# -- capture -------------------------------------------------------------------------------


def cmd_capture(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        if args.action == "show":
            status = client.capture(args.model)
        elif args.action == "off":
            status = client.stop_capture(args.model)
        else:
            rule = {
                "below_score": None if args.below_score < 0 else args.below_score,
                "sample_rate": args.sample_rate,
                "max_per_hour": args.max_per_hour,
                "max_images": args.max_images,
                "expire_after_days": args.expire_after_days,
                "dataset": args.dataset,
            }
            status = client.set_capture(args.model, **rule)
    if _print(args, status):
        return 0
    if not status.enabled:
        out.print(f"capture is off for {args.model}; {status.images} images kept")
        return 0
    s = status.settings
    assert s is not None
    below = f"top score under {s.below_score}" if s.below_score is not None else "no threshold"
    out.print(
        f"capture is on for {args.model}: {below}, sampling {s.sample_rate:g}, at most"
        f" {s.max_per_hour} an hour and {s.max_images} in all"
        + (f", deleted after {s.expire_after_days:g} days" if s.expire_after_days else "")
        + (f", accepted into dataset {s.dataset}" if s.dataset else "")
    )
    out.print(f"kept now: {status.images} images ({status.last_hour} in the last hour)")
    return 0


# -- review --------------------------------------------------------------------------------


def cmd_review(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        if args.action == "list":
            page = client.review(args.model, args.order, args.label, args.offset, args.limit)
            if _print(args, page):
                return 0
            table = _table("id", "model", "version", "guess", "score", "file", "kept at")
            for item in page.items:
                table.add_row(
                    item.id,
                    item.model,
                    str(item.version),
                    item.label,
                    f"{item.score:.3f}",
                    item.filename or "",
                    item.created_at,
                )
            table.show()
            where = f"; accepted images go to dataset {page.dataset}" if page.dataset else ""
            err.print(f"{len(page.items)} of {page.total} (offset {page.offset}){where}")
            return 0
        if args.action == "export":
            path = client.export_review(args.model, Path(args.output or "."))
            if not _print(args, {"path": str(path), "bytes": path.stat().st_size}):
                err.print(f"wrote {path}")
            return 0
        if args.action == "clear":
            if not args.yes:
                raise Failure(
                    f"this deletes every kept image of {args.model!r}; add --yes to do it"
                )
            deleted = client.clear_review(args.model)
            if not _print(args, {"deleted": deleted}):
                err.print(f"deleted {deleted} kept images of {args.model}")
            return 0
        results = []
        for capture_id in args.ids:
            if args.action == "accept":
                results.append(client.accept(capture_id, args.label, args.dataset))
            else:
                results.append(client.discard(capture_id))
    if not _print(args, [r.model_dump() for r in results]):
        for r in results:
            if r.action == "discard":
                err.print(f"{r.id}: discarded")
            else:
                new = " (a new class)" if r.new_class else ""
                err.print(
                    f"{r.id}: added to {r.dataset} as {escape(r.label or '')}{new};"
                    f" dataset version {r.version}"
                )
    return 0


# -- label health ----------------------------------------------------------------


def cmd_health(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        version = args.version or client.dataset(args.name).latest_version
        report = client.label_health(args.name, version, args.model, args.refresh)
    if _print(args, report):
        return 0
    model = report["model"]
    out.print(
        f"{args.name} version {version}, judged by {model['name']} version {model['version']}:"
        f" {report['images']} images, {report['suspects_found']} suspect labels,"
        f" {report['duplicates_found']} near-duplicate pairs"
    )
    suspects = _table("image id", "file", "labelled", "model's guess", "score")
    for s in report["suspects"][: args.limit]:
        suspects.add_row(s["id"], s["filename"], s["label"], s["guess"], f"{s['guess_score']:.3f}")
    suspects.show()
    if report["duplicates"]:
        pairs = _table("image", "its class", "near duplicate", "its class", "bits apart")
        for p in report["duplicates"][: args.limit]:
            pairs.add_row(p["a"], p["a_label"], p["b"], p["b_label"], str(p["distance"]))
        pairs.show()
    if report["confused"]:
        confused = _table("labelled", "taken for", "images", "share")
        for c in report["confused"]:
            confused.add_row(c["label"], c["guess"], str(c["count"]), f"{c['share']:.1%}")
        confused.show()
    err.print(
        f"fix one: convserve datasets relabel {args.name} IMAGE_ID CLASS, or"
        f" convserve datasets remove {args.name} IMAGE_ID"
    )
    return 0


def add_review_commands(sub: Any, remote: argparse.ArgumentParser) -> None:
    c = sub.add_parser("capture", help="keep uncertain predictions for review: show, set, off")
    actions = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    c.set_defaults(func=cmd_capture)
    for name, words in (("show", "the model's capture rule"), ("off", "turn capture off")):
        actions.add_parser(name, parents=[remote], help=words).add_argument("model")
    s = actions.add_parser("set", parents=[remote], help="turn capture on, or change it")
    s.add_argument("model")
    s.add_argument(
        "--below-score",
        type=float,
        default=0.5,
        help="keep images whose top score is under this (-1: no threshold)",
    )
    s.add_argument("--sample-rate", type=float, default=0.0, help="keep this share of all")
    s.add_argument("--max-per-hour", type=int, default=100)
    s.add_argument("--max-images", type=int, default=1000)
    s.add_argument("--expire-after-days", type=float, help="delete kept images after this")
    s.add_argument("--dataset", help="accepted images go here (default: the model's own)")

    r = sub.add_parser("review", help="the queue of kept predictions: list, accept, discard")
    actions = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    r.set_defaults(func=cmd_review)
    p = actions.add_parser("list", parents=[remote], help="kept predictions, with their ids")
    p.add_argument("--model", help="only this model's")
    p.add_argument("--order", choices=["newest", "least_confident", "class"], default="newest")
    p.add_argument("--label", help="only images predicted as this class")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=50)
    p = actions.add_parser("accept", parents=[remote], help="add kept images to the dataset")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--label", help="the class (default the model's guess; new: a new class)")
    p.add_argument("--dataset", help="the dataset (default: the model's own)")
    p = actions.add_parser("discard", parents=[remote], help="delete kept images")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = actions.add_parser("export", parents=[remote], help="download a model's kept images")
    p.add_argument("--model", required=True)
    p.add_argument("-o", "--output", help="the zip to write, or a folder (default .)")
    p = actions.add_parser("clear", parents=[remote], help="delete every kept image of a model")
    p.add_argument("--model", required=True)
    p.add_argument("--yes", action="store_true", help="confirm")

    h = sub.add_parser(
        "health", parents=[remote], help="a dataset version's labels: suspects, duplicates"
    )
    h.add_argument("name", metavar="DATASET")
    h.add_argument("--version", type=int, help="default the latest")
    h.add_argument("--model", help="judge with this model (default: trained on the dataset)")
    h.add_argument("--refresh", action="store_true", help="compute the report again")
    h.add_argument("--limit", type=int, default=20, help="rows per table")
    h.set_defaults(func=cmd_health)
