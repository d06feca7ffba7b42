"""Command line: ``python -m app serve|train|evaluate|models`` (the local registry).

The ``convserve`` command (`app.client.cli`) has the same service commands and talks to a
running service for the rest."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.config import get_settings
from app.training.params import add_arguments


def _print_json(data: Any) -> None:
    print(json.dumps(data, default=str), flush=True)


def _fail(message: str, code: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    _print_json({"error": message, "code": code})
    return status


def loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume others can reach it


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.shutdown import DrainingServer

    settings = get_settings()
    if not loopback(args.host) and not settings.api_key and not settings.allow_open:
        return _fail(
            f"refusing to listen on {args.host} with no CONVSERVE_API_KEY: anyone who can"
            " reach this machine could train, promote, delete and export. Set"
            " CONVSERVE_API_KEY (then send 'Authorization: Bearer <key>' with admin calls),"
            " or CONVSERVE_ALLOW_OPEN=true to serve without one, or listen on 127.0.0.1",
            "open_admin_api",
        )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout_seconds,
    )
    DrainingServer(config, app.state.drain, settings.shutdown_drain_seconds).run()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from app.errors import ConvserveError
    from app.storage.factory import open_registry
    from app.training.params import TrainParams, from_arguments
    from app.training.trainer import train

    try:
        params = TrainParams(**from_arguments(args))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        return _fail(problems, "invalid_parameters")
    settings = get_settings()
    registry = open_registry(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="train-", dir=settings.data_dir) as workspace:
        try:
            result = train(
                Path(args.data),
                args.model,
                params,
                registry,
                Path(workspace),
                weights=settings.pretrained,
                source="cli",
                activate=args.activate,
                study=settings.precision_study,
            )
        except ConvserveError as exc:  # the dataset's or the registry's
            return _fail(exc.message, exc.code)
    _print_json(result.summary())
    return 0


def _model_version(registry: Any, text: str) -> tuple[str, int | None]:
    """``NAME`` (its active version) or ``NAME:VERSION``: the name and the version, or
    None when the registry does not have it."""
    name, _, version_text = text.partition(":")
    version = (
        int(version_text)
        if (version_text.isascii() and version_text.isdigit())
        else registry.active_version(name)
    )
    if version is None or not registry.exists(name, version):
        return name, None
    return name, version


def cmd_study(args: argparse.Namespace) -> int:
    from app.data.heldout import HeldOut, heldout_from_directory, read_heldout
    from app.serving.openvino_backend import int8_ir_path
    from app.serving.precision import study_or_fallback
    from app.storage.factory import open_registry

    settings = get_settings()
    registry = open_registry(settings)
    name, version = _model_version(registry, args.model)
    if version is None:
        return _fail(f"model {args.model!r} is not in the registry", "model_not_found")
    meta = registry.metadata(name, version)
    folder = registry.version_dir(name, version)
    heldout: HeldOut | None
    if args.images:
        try:
            heldout = heldout_from_directory(
                Path(args.images), list(meta["class_names"]), int(meta["image_size"])
            )
        except (OSError, ValueError) as exc:
            return _fail(str(exc), "invalid_dataset")
        heldout.save(folder)
        int8 = int8_ir_path(registry.model_path(name, version))
        for stale in (int8, int8.with_suffix(".bin")):  # calibrated on the old images
            stale.unlink(missing_ok=True)
    else:
        try:
            heldout = read_heldout(folder)
        except ValueError as exc:
            return _fail(f"{exc}; give labelled images with --images", "invalid_heldout")
        if heldout is None:
            return _fail(
                f"{name} version {version} has no held-out images; give some with --images"
                " (a folder per class, named as the model's classes)",
                "no_heldout_images",
            )
    if args.after_job:  # beside a serving process: its threads and priority, as a job's
        from app.jobs.runner import limit_threads

        limit_threads(settings.job_threads, settings.job_nice)
    result = study_or_fallback(
        registry.model_path(name, version), int(meta["image_size"]), heldout, log=print
    )
    registry.share(name, version)  # its OpenVINO models, before the metadata names them
    registry.update_metadata(
        name, version, {"precision_study": result, "heldout": heldout.summary()}
    )
    _print_json({"model": name, "version": version, **result})
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from app.data.datasets import DatasetError
    from app.storage.factory import open_registry
    from app.storage.registry import RegistryError
    from app.training.evaluate import evaluate_directory

    settings = get_settings()
    registry = open_registry(settings)
    name, version = _model_version(registry, args.model)
    if version is None:
        return _fail(f"model {args.model!r} is not in the registry", "model_not_found")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="eval-", dir=settings.data_dir) as workspace:
            result = evaluate_directory(registry, name, version, Path(args.data), Path(workspace))
    except (DatasetError, RegistryError) as exc:
        return _fail(exc.message, exc.code)
    _print_json(result)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from app.storage.factory import open_registry

    registry = open_registry(get_settings())
    rows: list[dict[str, Any]] = []
    for name in registry.names():
        versions = registry.versions(name)
        active = registry.active_version(name)
        meta = registry.metadata(name, active) if active is not None else {}
        rows.append(
            {
                "name": name,
                "active_version": active,
                "versions": versions,
                "base": meta.get("base"),
                "classes": len(meta.get("class_names", [])),
                "accuracy": (meta.get("metrics") or {}).get("accuracy"),
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'name':<20} {'active':>6} {'versions':<16} {'base':<14} {'accuracy':>8}")
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        shown = ",".join(map(str, r["versions"]))
        print(f"{r['name']:<20} {r['active_version']!s:>6} {shown:<16} {r['base']!s:<14} {acc:>8}")
    return 0


def cmd_run_job(args: argparse.Namespace) -> int:
    from app.jobs.runner import run_job

    return run_job(args.job_id, get_settings(), owner=args.owner)


def cmd_worker(args: argparse.Namespace) -> int:
    from app.jobs.worker import run_worker

    settings = get_settings()
    if not settings.broker_url:
        print("a worker needs CONVSERVE_BROKER_URL (for example redis://localhost:6379/0)",
              file=sys.stderr)  # fmt: skip
        return 2
    return run_worker(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_service_commands(sub)

    ls = sub.add_parser("models", help="list the registry")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_models)
    return parser


def add_service_commands(sub: Any) -> None:
    """``serve``, ``train``, ``evaluate`` and ``run-job``: shared by ``python -m app`` and
    the ``convserve`` command."""
    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1: this machine only; another"
        " address needs CONVSERVE_API_KEY, or CONVSERVE_ALLOW_OPEN=true)",
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    tr = sub.add_parser("train", help="train a new version of a model on a directory")
    tr.add_argument("--data", required=True, help="folder with one sub-folder per class")
    tr.add_argument("--model", required=True, help="registry name of the model")
    add_arguments(tr)
    tr.add_argument("--activate", action="store_true", help="make the new version active")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="score a registry model on a directory")
    ev.add_argument("--model", required=True, help="NAME or NAME:VERSION")
    ev.add_argument("--data", required=True, help="folder with one sub-folder per class")
    ev.set_defaults(func=cmd_evaluate)

    st = sub.add_parser(
        "study",
        help="measure a version's accuracy and speed at each inference precision and choose"
        " the one `auto` serves (the service uses it when it next loads the version)",
    )
    st.add_argument("--model", required=True, help="NAME or NAME:VERSION")
    st.add_argument(
        "--images",
        help="labelled images to measure on (a folder per class, named as the model's"
        " classes), for a version that kept none, such as the ImageNet ones",
    )
    st.add_argument(
        "--after-job",
        action="store_true",
        help="run as the service runs it after a job: with the job's threads, at low priority",
    )
    st.set_defaults(func=cmd_study)

    job = sub.add_parser("run-job", help="run one queued fine-tuning job (the service does this)")
    job.add_argument("job_id")
    job.add_argument("--owner", help="the lease holder that started the job")
    job.set_defaults(func=cmd_run_job)

    worker = sub.add_parser(
        "worker",
        help="run fine-tuning jobs from the Redis queue (CONVSERVE_BROKER_URL) until stopped",
    )
    worker.set_defaults(func=cmd_worker)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
