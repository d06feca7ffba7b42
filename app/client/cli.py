"""The ``convserve`` command.

``convserve serve|train|evaluate`` run the service and training on this machine (as
``python -m app`` does); the other commands talk to a running service at ``--url`` /
``CONVSERVE_URL`` with the key from ``--api-key`` / ``CONVSERVE_API_KEY``:

    convserve predict PATH... [--model M] [--version V] [--top-k K] [--json | --csv FILE]
    convserve finetune [DIR|ARCHIVE] [--dataset NAME[:VERSION]] --model M [training options]
                       [--no-promote] [--wait]
    convserve datasets list|show|create|add|images|remove|relabel|export|delete ...
    convserve jobs [ID] [--follow] [--cancel]
    convserve models [NAME]
    convserve activate NAME VERSION
    convserve delete NAME [VERSION]

Progress bars go to standard error and only when it is a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import argcomplete
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from app import __version__
from app.client.api import DEFAULT_URL, APIError, AsyncClient, Client, Event, zip_folder
from app.client.keys import add_key_commands
from app.client.output import Failure, _table, err, out
from app.client.review import add_review_commands
from app.client.rollout import add_rollout_commands
from app.schemas import Job
from app.training.params import add_arguments, from_arguments

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
# Images per /predict request: fewer round trips; the service batches across requests too.
IMAGES_PER_REQUEST = 8
# Status codes after which a multi-image request is sent again image by image, to find
# the bad file(s) and still classify the others.
BAD_INPUT = {400, 413, 415, 422}
# Codes of those that are about the request, not a file in it: said once.
REQUEST_ERRORS = {"invalid_parameters", "unknown_tta"}

from app.client.output import Rows  # noqa: E402,F401

# -- predict --------------------------------------------------------------------------------


def image_files(paths: list[str]) -> list[Path]:
    """Files named on the command line, and the images under the folders named."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise Failure(f"{raw}: no such file or folder")
    return found


@dataclass
class PredictRun:
    results: dict[Path, dict[str, Any]] = field(default_factory=dict)
    errors: dict[Path, APIError] = field(default_factory=dict)  # a file the service refused
    # An error that is not about one file (unknown model, no key, service down): the run
    # stops at the first, and it is said once.
    fatal: APIError | None = None


async def _predict_group(
    client: AsyncClient, group: list[Path], args: argparse.Namespace, run: PredictRun
) -> None:
    parts = [(str(p), p.read_bytes()) for p in group]
    for attempt in range(4):
        try:
            answer = await client.predict(parts, args.model, args.version, args.top_k)
        except APIError as exc:
            if exc.status == 503 and attempt < 3:  # queue full or model swapping: wait
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            if exc.status in BAD_INPUT and exc.code not in REQUEST_ERRORS:
                if len(group) > 1:
                    for path in group:  # find the bad one(s); the others still get answers
                        await _predict_group(client, [path], args, run)
                    return
                run.errors[group[0]] = exc
                return
            run.fatal = run.fatal or exc
            return
        for path, item in zip(group, answer.predictions, strict=True):
            run.results[path] = {
                "path": str(path),
                "model": answer.model,
                "version": answer.version,
                "unknown": item.unknown,
                "similarity": item.similarity,
                "top": [label.model_dump() for label in item.top],
            }
        return


async def _predict_all(
    args: argparse.Namespace, files: list[Path], progress: _RateProgress
) -> PredictRun:
    run = PredictRun()
    task = progress.add_task("classifying", total=len(files))
    groups = [files[i : i + args.per_request] for i in range(0, len(files), args.per_request)]
    pending = iter(groups)

    async with AsyncClient(args.url, args.api_key) as client:

        async def worker() -> None:
            for group in pending:
                if run.fatal is not None:
                    return
                await _predict_group(client, group, args, run)
                progress.advance(task, len(group))

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return run


def cmd_predict(args: argparse.Namespace) -> int:
    files = image_files(args.paths)
    if not files:
        raise Failure("no images found in " + ", ".join(args.paths))
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    ]
    started = time.perf_counter()
    with Progress(*columns, console=err, disable=not err.is_terminal) as progress:
        progress_rate = _RateProgress(progress)
        run = asyncio.run(_predict_all(args, files, progress_rate))
    seconds = time.perf_counter() - started
    if run.fatal is not None:
        raise run.fatal  # said once by main(), whatever the number of files
    _show_predictions(args, files, run)
    for path, exc in run.errors.items():
        detail = exc.detail.removeprefix(f"{path}: ")  # the service names the file too
        err.print(f"[red]failed[/red] {escape(str(path))}: {escape(detail)} ({exc.code})")
    done = len(run.results)
    err.print(
        f"{done} of {len(files)} images classified in {seconds:.1f} s"
        f" ({done / seconds if seconds else 0:.1f} images/s); {len(run.errors)} failed"
    )
    return 1 if run.errors else 0


class _RateProgress:
    """A `Progress` whose tasks show images per second."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.started = time.perf_counter()
        self.done = 0

    def add_task(self, description: str, total: int) -> Any:
        return self.progress.add_task(description, total=total, rate="")

    def advance(self, task: Any, n: int) -> None:
        self.done += n
        rate = self.done / max(time.perf_counter() - self.started, 1e-6)
        self.progress.update(task, advance=n, rate=f"{rate:.1f} images/s")


def _show_predictions(args: argparse.Namespace, files: list[Path], run: PredictRun) -> None:
    if args.json:
        for path in files:
            if path in run.results:
                print(json.dumps(run.results[path]))
            elif path in run.errors:
                exc = run.errors[path]
                error = {"status": exc.status, "code": exc.code, "detail": exc.detail}
                print(json.dumps({"path": str(path), "error": error}))
        return
    if args.csv:
        with _open_output(args.csv) as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["path", "model", "version", "rank", "label", "index", "score", "unknown"]
            )
            for path in files:
                result = run.results.get(path)
                for rank, label in enumerate(result["top"] if result else [], 1):
                    writer.writerow(
                        [
                            path,
                            result["model"],  # type: ignore[index]
                            result["version"],  # type: ignore[index]
                            rank,
                            label["label"],
                            label["index"],
                            f"{label['score']:.6f}",
                            str(result["unknown"]).lower(),  # type: ignore[index]
                        ]
                    )
        return
    table = _table("file", "model", "top class", "score", "runners-up")
    for path in files:
        result = run.results.get(path)
        if result is None:
            continue
        best, *rest = result["top"]
        others = ", ".join(f"{r['label']} {r['score']:.3f}" for r in rest[:2])
        model = f"{result['model']}:{result['version']}"
        # An image the version abstains on is said so; its best guess is still shown.
        top = f"unknown (best guess {best['label']})" if result["unknown"] else best["label"]
        table.add_row(str(path), model, top, f"{best['score']:.3f}", others)
    table.show()


class _open_output:
    def __init__(self, target: str) -> None:
        self.target = target
        self.fh: IO[str] | None = None

    def __enter__(self) -> IO[str]:
        if self.target == "-":
            return sys.stdout
        self.fh = open(self.target, "w", newline="", encoding="utf-8")
        return self.fh

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()


# -- finetune and jobs ----------------------------------------------------------------------


def show_dataset(job: Job) -> None:
    """What the service found in a job's images when it checked them: classes, counts,
    warnings and skipped files."""
    summary = job.dataset or {}
    counts = summary.get("counts") or {}
    if not counts:
        return
    listed = ", ".join(f"{name} {n}" for name, n in counts.items())
    err.print(escape(f"{len(counts)} classes, {sum(counts.values())} images ({listed})"))
    for warning in summary.get("warnings", []):
        err.print(f"[yellow]warning[/yellow]: {escape(warning)}")
    for skipped in job.skipped[:10]:
        err.print(
            f"  skipped {escape(str(skipped.get('path')))}: {escape(str(skipped.get('reason')))}"
        )


class _ReadProgress:
    """A binary file that advances a progress bar as it is read (httpx reads uploads in
    chunks)."""

    def __init__(self, fh: IO[bytes], progress: Progress, task: Any) -> None:
        self.fh, self.progress, self.task = fh, progress, task

    def read(self, size: int = -1) -> bytes:
        chunk = self.fh.read(size)
        self.progress.advance(self.task, len(chunk))
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def _dataset_ref(value: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION`` (an argparse type)."""
    name, _, version = value.partition(":")
    if not name or (version and not (version.isascii() and version.isdigit())):
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME or NAME:VERSION")
    return name, int(version) if version else None


def cmd_finetune(args: argparse.Namespace) -> int:
    stored, version = args.stored if args.stored else (None, None)
    form = dict(
        model=args.model,
        promote=args.rollout or not args.no_promote,
        rollout_share=args.rollout_share,
        dataset_name=stored,
        dataset_version=version,
        **from_arguments(args),
    )
    if args.dataset is None:
        if stored is None:
            raise Failure(
                "name a folder or archive to upload, or a stored --dataset NAME[:VERSION]"
            )
        with Client(args.url, args.api_key) as client:
            return _started(client, client.finetune(None, **form), args)
    if version is not None:
        raise Failure(
            "an upload becomes the dataset's next version: give --dataset NAME without :VERSION"
        )
    source = Path(args.dataset)
    if source.is_dir():
        # The service checks the images before it queues the job (and refuses a dataset it
        # cannot train on, with what is wrong); the job then says what it found.
        archive, name = zip_folder(source), f"{source.name or 'dataset'}.zip"
    elif source.is_file() and source.name.lower().endswith(ARCHIVE_SUFFIXES):
        archive, name = open(source, "rb"), source.name  # noqa: SIM115 (closed below)
    else:
        raise Failure(f"{source}: not a folder of class folders, nor a .zip/.tar/.tar.gz")
    size = os.fstat(archive.fileno()).st_size
    columns = [
        TextColumn("uploading"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    ]
    with Client(args.url, args.api_key) as client:
        with archive, Progress(*columns, console=err, disable=not err.is_terminal) as progress:
            task = progress.add_task("upload", total=size)
            upload = _ReadProgress(archive, progress, task)
            created = client.finetune((name, upload), **form)  # type: ignore[arg-type]
        return _started(client, created, args)


def _started(client: Client, created: Any, args: argparse.Namespace) -> int:
    job_id = created.job_id
    err.print(f"job {job_id} {created.status}")
    show_dataset(client.job(job_id))
    if args.json and not args.wait:
        print(json.dumps(created.model_dump()))
    if not args.wait:
        err.print(f"follow it with: convserve jobs {job_id} --follow")
        return 0
    return follow(client, job_id, args)


def cmd_retrain(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        created = client.retrain(args.model, args.dataset_version, not args.no_promote)
        return _started(client, created, args)


def follow(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Print the job's epochs as they come, then its result; 0 when it succeeded."""
    try:
        job = client.wait(job_id, on_event=_EpochPrinter())
    except KeyboardInterrupt:
        return _interrupted(client, job_id)
    if args.json:
        print(json.dumps(job.model_dump()))
    else:
        show_job(job)
    return 0 if job.status == "succeeded" else 1


class _EpochPrinter:
    """One line per epoch; a bar within the epoch while it runs (terminals only)."""

    def __init__(self) -> None:
        columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
        self.progress = Progress(*columns, console=err, disable=not err.is_terminal)
        self.task: Any = None
        self.total = 0

    def __call__(self, event: Event) -> None:
        data = event.data
        if event.type == "status":
            err.print(f"status: {data['status']}")
        elif event.type == "progress":
            self.total = int(data.get("total_epochs") or self.total)
            within = data["fraction"] * self.total - data["epoch"]
            label = f"epoch {data['epoch'] + 1}/{self.total} ({data['phase']})"
            if self.task is None:
                self.progress.start()
                self.task = self.progress.add_task(label, total=1.0)
            self.progress.update(self.task, description=label, completed=max(within, 0.0))
        elif event.type == "epoch":
            metrics = "  ".join(
                f"{k} {v:.4f}"
                for k, v in data.items()
                if k not in ("epoch", "phase", "seconds", "ended_at")
            )
            total = f"/{self.total}" if self.total else ""
            self.progress.console.print(
                f"epoch {data['epoch']}{total} {data['phase']:<9} {metrics}"
                f"  {data.get('seconds', 0):.1f} s"
            )
        elif event.type == "done":
            self.progress.stop()


def _interrupted(client: Client, job_id: str) -> int:
    answer = ""
    if sys.stdin.isatty():
        try:
            answer = input(f"\ncancel job {job_id}? [y/N] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = ""
    if answer in ("y", "yes"):
        job = client.cancel(job_id)
        err.print(f"job {job_id} {job.status}")
        return 130
    err.print(f"\njob {job_id} keeps running; follow it again with: convserve jobs {job_id} -f")
    return 130


def show_job(job: Job) -> None:
    out.print(f"job {job.job_id}: {job.status} (model {job.model})")
    if job.error is not None:
        out.print(f"error: {job.error.detail} ({job.error.code})")
    if job.progress is not None and job.status not in ("succeeded", "failed", "cancelled"):
        p = job.progress
        eta = f", about {p.eta_seconds:.0f} s left" if p.eta_seconds else ""
        out.print(f"{p.phase}, epoch {p.epoch}/{p.total_epochs}, {p.fraction:.0%} done{eta}")
    result = job.result or {}
    metrics = result.get("metrics")
    if not metrics:
        return
    promoted = "active" if result.get("promoted") else "not active"
    out.print(
        f"new version {result.get('model')}:{result.get('version')} ({promoted}),"
        f" validation accuracy {metrics['accuracy']:.4f} on {metrics.get('images', '?')} images"
    )
    per_class = _table("class", "precision", "recall", "f1", "support", title="per class")
    for name, row in metrics.get("per_class", {}).items():
        per_class.add_row(
            name,
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
            f"{row['f1']:.3f}",
            str(row["support"]),
        )
    per_class.show()
    names = metrics.get("class_names", [])
    matrix = _table("true \\ predicted", *names, title="confusion matrix")
    for name, row in zip(names, metrics.get("confusion_matrix", []), strict=False):
        matrix.add_row(name, *map(str, row))
    matrix.show()


def cmd_jobs(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        if args.job_id is None:
            jobs = client.jobs(args.limit).jobs
            if args.json:
                print(json.dumps([j.model_dump() for j in jobs]))
                return 0
            table = _table("job", "model", "status", "created", "epoch", "accuracy", "version")
            for job in jobs:
                epoch = f"{job.progress.epoch}/{job.progress.total_epochs}" if job.progress else ""
                result = job.result or {}
                accuracy = (result.get("metrics") or {}).get("accuracy")
                table.add_row(
                    job.job_id,
                    job.model,
                    job.status,
                    job.created_at,
                    epoch,
                    "" if accuracy is None else f"{accuracy:.4f}",
                    str(result.get("version", "")),
                )
            table.show()
            return 0
        if args.cancel:
            job = client.cancel(args.job_id)
            err.print(f"job {job.job_id} {job.status}")
            if not args.follow:
                if args.json:
                    print(json.dumps(job.model_dump()))
                return 0
        if args.follow:
            return follow(client, args.job_id, args)
        job = client.job(args.job_id)
        if args.json:
            print(json.dumps(job.model_dump()))
        else:
            show_job(job)
        return 0


# -- models ---------------------------------------------------------------------------------


def _classes(names: list[str], shown: int = 10) -> str:
    """A model's classes in a line: all of a few, the first ones of many."""
    if len(names) <= shown:
        return f"classes: {', '.join(names)}"
    return f"{len(names)} classes: {', '.join(names[:shown])}, ... (all of them: --json)"


def _dataset(record: dict[str, Any] | None) -> str:
    """What a version trained on: ``NAME:VERSION (N images)``, or the image count."""
    if not record:
        return ""
    images = f"{record.get('images', '?')} images"
    if record.get("name"):
        return f"{record['name']}:{record['version']} ({images})"
    return images


def _accuracy(metrics: dict[str, Any] | None) -> str:
    value = (metrics or {}).get("accuracy")
    return "" if value is None else f"{value:.4f}"


def cmd_models(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        if args.name is None:
            models = client.models().models
            if args.json:
                print(json.dumps([m.model_dump() for m in models]))
                return 0
            table = _table("model", "status", "active", "versions", "base", "classes", "accuracy")
            for m in models:
                status = m.status + (f" ({m.reason})" if m.reason else "")
                table.add_row(
                    m.name,
                    status,
                    str(m.active_version or ""),
                    ",".join(map(str, m.versions)),
                    m.architecture or "",
                    str(len(m.class_names)),
                    _accuracy(m.metrics),
                )
            table.show()
            return 0
        detail = client.model(args.name)
    if args.json:
        print(json.dumps(detail.model_dump()))
        return 0
    out.print(
        f"{detail.name}: {detail.status}, version {detail.active_version} serves"
        f" ({detail.backend}), {_classes(detail.class_names)}"
    )
    table = _table(
        "version", "active", "created", "source", "base", "classes", "accuracy", "dataset"
    )
    for v in detail.version_details:
        table.add_row(
            str(v.version),
            "*" if v.version == detail.active_version else "",
            v.created_at or "",
            v.source or "",
            v.base or "",
            str(len(v.class_names)),
            _accuracy(v.metrics),
            _dataset(v.dataset),
        )
    table.show()
    return 0


def cmd_architectures(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        architectures = client.architectures().architectures
    if args.json:
        print(json.dumps([a.model_dump() for a in architectures]))
        return 0
    table = _table("base", "network", "year", "input", "parameters", "ImageNet")
    for a in architectures:
        weights = "from scratch"  # Keras has no ImageNet weights for it
        if a.pretrained:
            weights = "cached" if a.weights_cached else "download"
        table.add_row(a.name, a.title, str(a.year), str(a.input_size), f"{a.parameters:,}", weights)
    table.show()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    target = Path(args.output or ".")
    if args.output and not target.parent.is_dir():
        raise Failure(f"no folder {str(target.parent)!r} to write {target.name!r} in")
    with Client(args.url, args.api_key) as client:
        err.print(f"exporting {args.name} version {args.version} as {args.format} ...")
        path = client.export(args.name, args.version, args.format, target)
    if args.json:
        print(json.dumps({"path": str(path), "bytes": path.stat().st_size}))
    else:
        err.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        detail = client.activate(args.name, args.version)
    if args.json:
        print(json.dumps(detail.model_dump()))
    err.print(f"{detail.name} now serves version {detail.active_version}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        if args.version is not None:
            detail = client.delete_version(args.name, args.version)
            if args.json:
                print(json.dumps(detail.model_dump()))
            err.print(f"deleted version {args.version} of {args.name}")
            return 0
        if not args.yes:
            raise Failure(
                f"this deletes every version of {args.name!r}; add --yes to do it"
                " (or name a VERSION)"
            )
        client.delete_model(args.name)
        if args.json:
            print(json.dumps({"deleted": args.name}))
        err.print(f"deleted model {args.name}")
        return 0


# -- datasets -------------------------------------------------------------------------------

# Images per request when adding to a dataset (the service's default limit is 32).
DATASET_IMAGES_PER_REQUEST = 16


def _print_change(args: argparse.Namespace, change: Any, what: str) -> None:
    if args.json:
        print(json.dumps(change.model_dump()))
        return
    err.print(f"{args.name}: {what}; now version {change.version}")
    for dup in change.duplicates[:10]:
        err.print(f"  already stored: {escape(dup.filename)} (in class {escape(dup.label)})")
    for skipped in change.skipped[:10]:
        err.print(f"  skipped {escape(skipped.path)}: {escape(skipped.reason)}")


def cmd_datasets(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key) as client:
        return int(DATASET_COMMANDS[args.action](client, args))


def _datasets_list(client: Client, args: argparse.Namespace) -> int:
    found = client.datasets().datasets
    if args.json:
        print(json.dumps([d.model_dump() for d in found]))
        return 0
    table = _table("dataset", "version", "classes", "images", "updated")
    for d in found:
        classes = ", ".join(f"{c} {n}" for c, n in d.classes.items())
        table.add_row(d.name, str(d.latest_version), classes, str(d.images), d.updated_at)
    table.show()
    return 0


def _datasets_show(client: Client, args: argparse.Namespace) -> int:
    if args.version is not None:
        detail = client.dataset_version(args.name, args.version)
        if args.json:
            print(json.dumps(detail.model_dump()))
            return 0
        out.print(f"{detail.name} version {detail.version} ({detail.created_at}): {detail.change}")
        counts = detail.classes
    else:
        info = client.dataset(args.name)
        if args.json:
            print(json.dumps(info.model_dump()))
            return 0
        out.print(f"{info.name}: version {info.latest_version}, {info.images} images")
        counts = info.classes
        for warning in info.warnings:
            err.print(f"[yellow]warning[/yellow]: {escape(warning)}")
    table = _table("class", "images")
    for label, n in counts.items():
        table.add_row(label, str(n))
    table.show()
    if args.version is None:
        versions = _table("version", "created", "change", "images")
        for v in info.versions:
            change = " ".join(f"{k}={v}" for k, v in v.change.items())
            versions.add_row(str(v.version), v.created_at, change, str(v.images))
        versions.show()
    return 0


def _datasets_create(client: Client, args: argparse.Namespace) -> int:
    source = None
    if args.path is not None:
        source = Path(args.path)
        if not source.exists():
            raise Failure(f"{args.path}: no such file or folder")
    change = client.create_dataset(args.name, source)
    _print_change(args, change, f"created with {change.added} images")
    return 0


def _datasets_add(client: Client, args: argparse.Namespace) -> int:
    files = image_files(args.paths)
    if not files:
        raise Failure("no image files in the paths given")
    added, change = 0, None
    for i in range(0, len(files), DATASET_IMAGES_PER_REQUEST):
        change = client.add_images(args.name, args.label, files[i : i + DATASET_IMAGES_PER_REQUEST])
        added += change.added
    assert change is not None
    if not args.json:
        err.print(f"{added} of {len(files)} images added to class {escape(args.label)}")
    _print_change(args, change, f"class {args.label}")
    return 0


def _datasets_images(client: Client, args: argparse.Namespace) -> int:
    page = client.dataset_images(args.name, args.version, args.label, args.offset, args.limit)
    if args.json:
        print(json.dumps(page.model_dump()))
        return 0
    table = _table("id", "class", "file", "source", "added")
    for item in page.items:
        table.add_row(item.id, item.label, item.filename, item.source, item.added_at)
    table.show()
    err.print(f"{len(page.items)} of {page.total} (offset {page.offset})")
    return 0


def _datasets_remove(client: Client, args: argparse.Namespace) -> int:
    _print_change(args, client.remove_image(args.name, args.image_id), "image removed")
    return 0


def _datasets_relabel(client: Client, args: argparse.Namespace) -> int:
    change = client.relabel_image(args.name, args.image_id, args.label, args.create_class)
    _print_change(args, change, f"image moved to class {args.label}")
    return 0


def _datasets_export(client: Client, args: argparse.Namespace) -> int:
    version = args.version or client.dataset(args.name).latest_version
    target = Path(args.output or ".")
    if args.output and not target.parent.is_dir():
        raise Failure(f"no folder {str(target.parent)!r} to write {target.name!r} in")
    path = client.export_dataset(args.name, version, target)
    if args.json:
        print(json.dumps({"path": str(path), "version": version, "bytes": path.stat().st_size}))
    else:
        err.print(f"wrote {path} (version {version}, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _datasets_delete(client: Client, args: argparse.Namespace) -> int:
    if not args.yes:
        raise Failure(f"this deletes dataset {args.name!r} and its images; add --yes to do it")
    client.delete_dataset(args.name)
    if args.json:
        print(json.dumps({"deleted": args.name}))
    err.print(f"deleted dataset {args.name}")
    return 0


DATASET_COMMANDS = {
    "list": _datasets_list,
    "show": _datasets_show,
    "create": _datasets_create,
    "add": _datasets_add,
    "images": _datasets_images,
    "remove": _datasets_remove,
    "relabel": _datasets_relabel,
    "export": _datasets_export,
    "delete": _datasets_delete,
}


def add_dataset_commands(sub: Any, remote: argparse.ArgumentParser) -> None:
    ds = sub.add_parser("datasets", help="stored datasets: list, show, create, add, relabel ...")
    actions = ds.add_subparsers(dest="action", required=True, metavar="ACTION")
    ds.set_defaults(func=cmd_datasets)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, parents=[remote], help=help)
        if name != "list":
            p.add_argument("name", metavar="NAME")
        return p

    action("list", "every dataset, with its images per class")
    p = action("show", "a dataset's classes and versions, or one version")
    p.add_argument("--version", type=int, help="show this version and what changed in it")
    p = action("create", "a new dataset, empty or from a folder of class folders or an archive")
    p.add_argument("path", nargs="?", metavar="PATH")
    p = action("add", "add image files (or the images in folders) to a class")
    p.add_argument("label", metavar="CLASS", help="the class; a new name makes a new class")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = action("images", "list images with their ids")
    p.add_argument("--label", help="only this class")
    p.add_argument("--version", type=int, help="default the latest")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=50)
    p = action("remove", "remove an image (a new version)")
    p.add_argument("image_id", metavar="IMAGE_ID")
    p = action("relabel", "move an image to another class (a new version)")
    p.add_argument("image_id", metavar="IMAGE_ID")
    p.add_argument("label", metavar="CLASS")
    p.add_argument("--create-class", action="store_true", help="make CLASS if it is new")
    p = action("export", "download a version as a zip of class folders")
    p.add_argument("version", type=int, nargs="?", metavar="VERSION", help="default the latest")
    p.add_argument("-o", "--output", help="the zip to write, or a folder (default .)")
    p = action("delete", "delete a dataset and its images")
    p.add_argument("--yes", action="store_true", help="confirm")


# -- parser ---------------------------------------------------------------------------------


def positive(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return number


def _remote_options(
    parser: argparse.ArgumentParser, url: Any, key: Any, flag: Any, url_default: str
) -> None:
    parser.add_argument(
        "--url",
        default=url,
        help=f"the service (default $CONVSERVE_URL or {url_default})",
    )
    parser.add_argument("--api-key", default=key, help="admin key (default $CONVSERVE_API_KEY)")
    parser.add_argument("--json", action="store_true", default=flag, help="print JSON for scripts")


SERVER_COMMANDS = ("serve", "train", "evaluate", "study", "run-job", "worker")


def _service_commands(sub: Any) -> None:
    """``serve``, ``train``, ``evaluate``, ``study``, ``run-job`` and ``worker`` run the
    service's own code (`app.__main__`), which is there only when the service is installed
    (``pip install 'convserve[server]'``). With the client alone they say so."""
    try:
        # The one import of the service's code in the client, and only to offer its
        # commands: the rest of the client never needs it.
        from app.__main__ import add_service_commands
    except ImportError as exc:
        missing = exc.name or "the service's dependencies"
        for name in SERVER_COMMANDS:
            cmd = sub.add_parser(name, help=f"(needs the service installed: {missing} is missing)")
            cmd.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            cmd.set_defaults(
                func=lambda args, name=name, missing=missing: _needs_server(name, missing)
            )
        return
    add_service_commands(sub)


def _needs_server(command: str, missing: str) -> int:
    raise Failure(
        f"convserve {command} runs the service on this machine, which this installation does"
        f" not have ({missing} is missing): pip install 'convserve[server]'"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convserve", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"convserve {__version__}")
    # The client options go before or after the command: given before, they are the
    # defaults; the subcommands' copies set nothing unless given (SUPPRESS).
    url = os.environ.get("CONVSERVE_URL", DEFAULT_URL)
    key = os.environ.get("CONVSERVE_API_KEY")
    _remote_options(parser, url, key, False, url_default=url)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _service_commands(sub)

    remote = argparse.ArgumentParser(add_help=False)
    _remote_options(remote, argparse.SUPPRESS, argparse.SUPPRESS, argparse.SUPPRESS, url)

    p = sub.add_parser("predict", parents=[remote], help="classify images and folders")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursive)")
    p.add_argument("--model", help="model name (default: the service's default model)")
    p.add_argument("--version", type=int, help="version (default: the active one)")
    p.add_argument("--top-k", type=positive, default=5, help="classes per image (default 5)")
    p.add_argument("--concurrency", type=positive, default=4, help="requests in flight (default 4)")
    p.add_argument(
        "--per-request",
        type=positive,
        default=IMAGES_PER_REQUEST,
        help=f"images per request (default {IMAGES_PER_REQUEST})",
    )
    p.add_argument("--csv", metavar="FILE", help="write the results as CSV ('-': stdout)")
    p.set_defaults(func=cmd_predict)

    f = sub.add_parser("finetune", parents=[remote], help="train a new version on a dataset")
    f.add_argument(
        "dataset", nargs="?", help="a folder of class folders, or a .zip/.tar/.tar.gz to upload"
    )
    f.add_argument(
        "--dataset",
        dest="stored",
        type=_dataset_ref,
        metavar="NAME[:VERSION]",
        help="train on this stored dataset (default its latest version); with an upload,"
        " the upload is stored as its next version",
    )
    f.add_argument(
        "--model",
        required=True,
        help="model to train: a new version of it, or a new model of that name",
    )
    add_arguments(f)
    f.add_argument("--no-promote", action="store_true", help="do not activate the new version")
    f.add_argument(
        "--rollout",
        choices=["canary", "shadow"],
        help="roll the new version out instead of promoting it (see convserve rollout)",
    )
    f.add_argument("--rollout-share", type=float, help="with --rollout; default 0.1")
    f.add_argument("--wait", action="store_true", help="follow the job to its end")
    f.set_defaults(func=cmd_finetune)

    t = sub.add_parser(
        "retrain",
        parents=[remote],
        help="train a model again on its dataset's latest version (reviewed images included)",
    )
    t.add_argument("model")
    t.add_argument("--dataset-version", type=int, help="default the latest")
    t.add_argument("--no-promote", action="store_true", help="do not activate the new version")
    t.add_argument("--wait", action="store_true", help="follow the job to its end")
    t.set_defaults(func=cmd_retrain)

    j = sub.add_parser("jobs", parents=[remote], help="list, show, follow or cancel jobs")
    j.add_argument("job_id", nargs="?", metavar="ID")
    j.add_argument("-f", "--follow", action="store_true", help="follow the job to its end")
    j.add_argument("--cancel", action="store_true", help="cancel the job")
    j.add_argument("--limit", type=positive, default=20)
    j.set_defaults(func=cmd_jobs)

    m = sub.add_parser("models", parents=[remote], help="the served models, or one in detail")
    m.add_argument("name", nargs="?", metavar="NAME")
    m.set_defaults(func=cmd_models)

    r = sub.add_parser(
        "architectures", parents=[remote], help="the networks finetune accepts as --base"
    )
    r.set_defaults(func=cmd_architectures)

    e = sub.add_parser(
        "export", parents=[remote], help="download a version for another runtime (a zip)"
    )
    e.add_argument("name", metavar="NAME")
    e.add_argument("version", type=int, metavar="VERSION")
    e.add_argument(
        "--format",
        choices=["keras", "savedmodel", "tflite", "onnx", "openvino"],
        default="keras",
        help="default keras",
    )
    e.add_argument(
        "-o",
        "--output",
        help="the zip to write, or a folder for NAME-vVERSION-FORMAT.zip (default .)",
    )
    e.set_defaults(func=cmd_export)

    a = sub.add_parser("activate", parents=[remote], help="serve a version (promote, roll back)")
    a.add_argument("name", metavar="NAME")
    a.add_argument("version", type=int, metavar="VERSION")
    a.set_defaults(func=cmd_activate)

    d = sub.add_parser("delete", parents=[remote], help="delete a version, or a whole model")
    d.add_argument("name", metavar="NAME")
    d.add_argument("version", type=int, nargs="?", metavar="VERSION")
    d.add_argument("--yes", action="store_true", help="confirm deleting a whole model")
    d.set_defaults(func=cmd_delete)

    add_dataset_commands(sub, remote)
    add_review_commands(sub, remote)
    add_rollout_commands(sub, remote)
    add_key_commands(sub, remote)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argcomplete.autocomplete(parser)  # shell completion: register-python-argcomplete convserve
    args = parser.parse_args(argv)
    if getattr(args, "csv", None) and args.json:
        parser.error("--json and --csv each say how to print the results: choose one")
    try:
        return int(args.func(args))
    except APIError as exc:
        where = f" ({exc.code}, HTTP {exc.status})" if exc.status else ""
        err.print(f"error: {exc.detail}{where}", markup=False)
        return 1
    except Failure as exc:
        err.print(f"error: {exc}", markup=False)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
