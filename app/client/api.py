"""A typed HTTP client for the convserve API, sync (`Client`) and async (`AsyncClient`).

It imports nothing from the server side but the response schemas, so it works without
TensorFlow installed. Every failure, an API error or a service that cannot be reached,
raises `APIError` with the API's ``status``, ``code`` and ``detail``.

    from app.client import Client

    with Client("http://localhost:8000", api_key="...") as cs:
        print(cs.predict(["cat.jpg"]).predictions[0].top[0].label)
        job = cs.finetune("photos/", model="pets", epochs=3)
        for event in cs.events(job.job_id):
            print(event.type, event.data)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Concatenate, Generic, ParamSpec, TypeVar

import httpx
from httpx_sse import SSEError, aconnect_sse, connect_sse
from pydantic import BaseModel

from app.schemas import (
    ArchitectureList,
    AuditPage,
    CaptureStatus,
    Comparison,
    DatasetChange,
    DatasetImages,
    DatasetInfo,
    DatasetList,
    DatasetReport,
    DatasetVersionDetail,
    Job,
    JobCreated,
    JobList,
    KeyCreated,
    KeyInfo,
    KeyList,
    ModelDetail,
    ModelList,
    PredictResponse,
    ReviewItem,
    ReviewList,
    ReviewResult,
    RolloutStatus,
)

DEFAULT_URL = "http://localhost:8000"
# How often `events` connects again after the stream dropped, before it gives up.
RECONNECTS = 5

Model = TypeVar("Model", bound=BaseModel)
R = TypeVar("R")
P = ParamSpec("P")
# What `predict` takes as one image: encoded bytes, a path, a PIL image, a numpy array
# (H, W, 3 uint8 RGB), or a (filename, bytes) pair.
ImageInput = Any
# What `finetune` takes: a folder of class folders or an archive (paths), an open archive,
# or a (filename, open archive) pair.
DatasetInput = str | os.PathLike[str] | IO[bytes] | tuple[str, IO[bytes]]


class APIError(Exception):
    """An answer of the API that is not a success, or no answer at all (``status`` 0,
    ``code`` ``unreachable``)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} ({code}, HTTP {status})" if status else detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: ``status``, ``progress``, ``epoch`` or ``done``."""

    id: int
    type: str
    data: dict[str, Any]


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        code, detail = str(body["code"]), str(body["detail"])
    except (ValueError, KeyError, TypeError):
        code, detail = "http_error", response.text[:300] or response.reason_phrase
    raise APIError(response.status_code, code, detail)


def _unreachable(url: str, exc: httpx.TransportError) -> APIError:
    reason = str(exc) or type(exc).__name__
    return APIError(0, "unreachable", f"cannot reach the service at {url} ({reason})")


def _image_part(image: ImageInput, n: int) -> tuple[str, tuple[str, bytes]]:
    """One multipart ``file`` part for any of the inputs `predict` takes."""
    if isinstance(image, tuple):
        name, data = image
        return "file", (str(name), bytes(data))
    if isinstance(image, bytes | bytearray):
        return "file", (f"image-{n}", bytes(image))
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return "file", (path.name, path.read_bytes())
    from PIL import Image  # PIL images and numpy arrays are sent as PNG (lossless)

    if not isinstance(image, Image.Image):
        import numpy as np

        image = Image.fromarray(np.asarray(image).astype("uint8"))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "file", (f"image-{n}.png", buf.getvalue())


def _params(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


def _finetune_form(
    model: str | None, promote: bool | str, params: dict[str, Any]
) -> dict[str, str]:
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
    form = {k: v for k, v in form.items() if v != "None"}
    if model:
        form["model"] = model
    form["promote"] = str(promote).lower()
    return form


def _event(sse: Any) -> Event | None:
    """The job event of one parsed SSE block, or None for the server's keep-alive comment:
    httpx-sse hands a comment-only block on as an event with empty data once an id has
    been seen (the SSE spec says to drop it)."""
    if not sse.data:
        return None
    return Event(int(sse.id), sse.event, sse.json())


def _reads(kind: type[Model]) -> Callable[[httpx.Response], Model]:
    return lambda response: kind.model_validate(response.json())


def _reads_nothing(response: httpx.Response) -> None:
    return None


@dataclass
class Call(Generic[R]):
    """One API call, independent of how it is sent: its request, and how its answer is
    read. `Client` sends it synchronously, `AsyncClient` with asyncio."""

    method: str
    path: str
    read: Callable[[httpx.Response], R]
    params: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    json: Any = None
    files: Any = None
    # A dataset to upload as this multipart field: (field, a folder, path or open archive).
    upload: tuple[str, DatasetInput] | None = None
    # Stream the answer into this file (it appears whole or not at all).
    download: Path | None = None

    def request(self, files: Any = None) -> dict[str, Any]:
        given = {"params": self.params, "data": self.data, "json": self.json}
        given["files"] = files if files is not None else self.files
        return {k: v for k, v in given.items() if v is not None}


def _target(target: str | os.PathLike[str], name: str) -> Path:
    """A download's file: ``target``, or ``name`` in it when it is a folder."""
    path = Path(target)
    return path / name if path.is_dir() else path


class Calls:
    """Every call of the API, declared once; both clients are made from these."""

    # -- predictions and models ------------------------------------------------------------

    @staticmethod
    def predict(
        images: Sequence[ImageInput],
        model: str | None = None,
        version: int | None = None,
        top_k: int = 5,
    ) -> Call[PredictResponse]:
        """Classify images: paths, bytes, PIL images, numpy arrays or (name, bytes)."""
        params = _params(top_k=top_k, model=model or None, version=version)
        files = [_image_part(im, n) for n, im in enumerate(images)]
        return Call("POST", "/predict", _reads(PredictResponse), params=params, files=files)

    @staticmethod
    def models() -> Call[ModelList]:
        return Call("GET", "/models", _reads(ModelList))

    @staticmethod
    def architectures() -> Call[ArchitectureList]:
        return Call("GET", "/architectures", _reads(ArchitectureList))

    @staticmethod
    def model(name: str) -> Call[ModelDetail]:
        return Call("GET", f"/models/{name}", _reads(ModelDetail))

    @staticmethod
    def activate(name: str, version: int) -> Call[ModelDetail]:
        return Call("POST", f"/models/{name}/versions/{version}/activate", _reads(ModelDetail))

    @staticmethod
    def delete_version(name: str, version: int) -> Call[ModelDetail]:
        return Call("DELETE", f"/models/{name}/versions/{version}", _reads(ModelDetail))

    @staticmethod
    def delete_model(name: str) -> Call[None]:
        return Call("DELETE", f"/models/{name}", _reads_nothing)

    @staticmethod
    def export(name: str, version: int, format: str, target: str | os.PathLike[str]) -> Call[Path]:
        """Download the version in ``format`` (keras, savedmodel, tflite, onnx, openvino)
        as a zip to ``target`` (a file, or a folder to put ``NAME-vVERSION-FORMAT.zip`` in).
        The file appears whole or not at all."""
        path = _target(target, f"{name}-v{version}-{format}.zip")
        url = f"/models/{name}/versions/{version}/export"
        return Call("GET", url, lambda r: path, params={"format": format}, download=path)

    # -- fine-tuning -----------------------------------------------------------------------

    @staticmethod
    def check_dataset(archive: DatasetInput, validation_split: float = 0.2) -> Call[DatasetReport]:
        """The service's checks of a dataset (a folder, an archive path or an open archive),
        without training on it."""
        data = {"validation_split": str(validation_split)}
        return Call(
            "POST", "/datasets/check", _reads(DatasetReport), data=data, upload=("dataset", archive)
        )

    @staticmethod
    def finetune(
        dataset: DatasetInput | None = None,
        model: str | None = None,
        promote: bool | str = True,
        dataset_name: str | None = None,
        dataset_version: int | None = None,
        **params: Any,
    ) -> Call[JobCreated]:
        """Queue a job on an uploaded dataset (a folder of class folders, an archive path,
        or an open archive), on a stored one (``dataset_name``, ``dataset_version``), or
        on an upload stored as ``dataset_name``'s next version; ``params`` are the
        training parameters (and ``rollout_share``). ``promote``: True, False, or
        ``"canary"`` / ``"shadow"`` to roll the new version out instead."""
        form = _finetune_form(model, promote, params)
        form.update(
            {
                k: str(v)
                for k, v in _params(
                    dataset_name=dataset_name, dataset_version=dataset_version
                ).items()
            }
        )
        upload = ("dataset", dataset) if dataset is not None else None
        return Call("POST", "/finetune", _reads(JobCreated), data=form, upload=upload)

    @staticmethod
    def job(job_id: str) -> Call[Job]:
        return Call("GET", f"/finetune/{job_id}", _reads(Job))

    @staticmethod
    def jobs(limit: int = 100) -> Call[JobList]:
        return Call("GET", "/finetune", _reads(JobList), params={"limit": limit})

    @staticmethod
    def cancel(job_id: str) -> Call[Job]:
        return Call("DELETE", f"/finetune/{job_id}", _reads(Job))

    # -- datasets --------------------------------------------------------------------------

    @staticmethod
    def datasets() -> Call[DatasetList]:
        return Call("GET", "/datasets", _reads(DatasetList))

    @staticmethod
    def dataset(name: str) -> Call[DatasetInfo]:
        return Call("GET", f"/datasets/{name}", _reads(DatasetInfo))

    @staticmethod
    def create_dataset(name: str, archive: DatasetInput | None = None) -> Call[DatasetChange]:
        """A new dataset, empty or from a folder of class folders or an archive."""
        upload = ("archive", archive) if archive is not None else None
        return Call("POST", "/datasets", _reads(DatasetChange), data={"name": name}, upload=upload)

    @staticmethod
    def add_images(
        name: str, label: str, images: Sequence[ImageInput], source: str = "api"
    ) -> Call[DatasetChange]:
        """Add images (paths, bytes, PIL images ...) to class ``label`` of ``name``."""
        files = [_image_part(im, n) for n, im in enumerate(images)]
        params = {"label": label, "source": source}
        return Call(
            "POST", f"/datasets/{name}/images", _reads(DatasetChange), params=params, files=files
        )

    @staticmethod
    def dataset_images(
        name: str,
        version: int | None = None,
        label: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> Call[DatasetImages]:
        params = _params(version=version, label=label, offset=offset, limit=limit)
        return Call("GET", f"/datasets/{name}/images", _reads(DatasetImages), params=params)

    @staticmethod
    def remove_image(name: str, image_id: str) -> Call[DatasetChange]:
        return Call("DELETE", f"/datasets/{name}/images/{image_id}", _reads(DatasetChange))

    @staticmethod
    def relabel_image(
        name: str, image_id: str, label: str, create_class: bool = False
    ) -> Call[DatasetChange]:
        body = {"label": label, "create_class": create_class}
        return Call(
            "PATCH", f"/datasets/{name}/images/{image_id}", _reads(DatasetChange), json=body
        )

    @staticmethod
    def dataset_version(name: str, version: int) -> Call[DatasetVersionDetail]:
        return Call("GET", f"/datasets/{name}/versions/{version}", _reads(DatasetVersionDetail))

    @staticmethod
    def check_stored_dataset(
        name: str, version: int, validation_split: float = 0.2
    ) -> Call[DatasetReport]:
        """The service's checks of a stored dataset version, as a job would run them."""
        params = {"validation_split": validation_split}
        return Call(
            "GET",
            f"/datasets/{name}/versions/{version}/check",
            _reads(DatasetReport),
            params=params,
        )

    @staticmethod
    def delete_dataset(name: str) -> Call[None]:
        return Call("DELETE", f"/datasets/{name}", _reads_nothing)

    @staticmethod
    def export_dataset(name: str, version: int, target: str | os.PathLike[str]) -> Call[Path]:
        """Download a dataset version as a zip of class folders to ``target`` (a file, or a
        folder to put ``NAME-vVERSION.zip`` in)."""
        path = _target(target, f"{name}-v{version}.zip")
        url = f"/datasets/{name}/versions/{version}/export"
        return Call("GET", url, lambda r: path, download=path)

    # -- capture, review, retrain, label health --------------------------------------------

    @staticmethod
    def capture(model: str) -> Call[CaptureStatus]:
        return Call("GET", f"/models/{model}/capture", _reads(CaptureStatus))

    @staticmethod
    def set_capture(model: str, **rule: Any) -> Call[CaptureStatus]:
        """Turn capture on (or change it): ``below_score``, ``sample_rate``,
        ``max_per_hour``, ``max_images``, ``expire_after_days``, ``dataset``."""
        return Call("PUT", f"/models/{model}/capture", _reads(CaptureStatus), json=rule)

    @staticmethod
    def stop_capture(model: str) -> Call[CaptureStatus]:
        return Call("DELETE", f"/models/{model}/capture", _reads(CaptureStatus))

    @staticmethod
    def review(
        model: str | None = None,
        order: str = "newest",
        label: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> Call[ReviewList]:
        params = _params(model=model, order=order, label=label, offset=offset, limit=limit)
        return Call("GET", "/review", _reads(ReviewList), params=params)

    @staticmethod
    def review_item(capture_id: str) -> Call[ReviewItem]:
        return Call("GET", f"/review/{capture_id}", _reads(ReviewItem))

    @staticmethod
    def accept(
        capture_id: str, label: str | None = None, dataset: str | None = None
    ) -> Call[ReviewResult]:
        """Add a kept image to the dataset under ``label`` (default the model's guess)."""
        body = _params(action="accept", label=label, dataset=dataset)
        return Call("POST", f"/review/{capture_id}", _reads(ReviewResult), json=body)

    @staticmethod
    def discard(capture_id: str) -> Call[ReviewResult]:
        body = {"action": "discard"}
        return Call("POST", f"/review/{capture_id}", _reads(ReviewResult), json=body)

    @staticmethod
    def clear_review(model: str) -> Call[int]:
        """Delete every kept image of ``model``: how many."""
        return Call(
            "DELETE", "/review", lambda r: int(r.json()["deleted"]), params={"model": model}
        )

    @staticmethod
    def export_review(model: str, target: str | os.PathLike[str]) -> Call[Path]:
        """Download ``model``'s kept images (class folders of the guesses, and
        ``captures.json``) to ``target`` (a file, or a folder for ``MODEL-captures.zip``)."""
        path = _target(target, f"{model}-captures.zip")
        return Call("GET", "/review/export", lambda r: path, params={"model": model}, download=path)

    @staticmethod
    def retrain(
        model: str, dataset_version: int | None = None, promote: bool = True
    ) -> Call[JobCreated]:
        """A job training ``model`` again on its dataset's latest version, with the
        parameters of the version serving now."""
        body = {"dataset_version": dataset_version, "promote": promote}
        return Call("POST", f"/models/{model}/retrain", _reads(JobCreated), json=body)

    @staticmethod
    def compare(model: str, a: int, b: int) -> Call[Comparison]:
        params = {"a": a, "b": b}
        return Call("GET", f"/models/{model}/compare", _reads(Comparison), params=params)

    @staticmethod
    def label_health(
        name: str, version: int, model: str | None = None, refresh: bool = False
    ) -> Call[dict[str, Any]]:
        """The label-health report of a dataset version."""
        params = _params(model=model, refresh=refresh or None)
        return Call("GET", f"/datasets/{name}/versions/{version}/health", _json, params=params)

    # -- rollouts ----------------------------------------------------------------------------

    @staticmethod
    def start_rollout(
        model: str, version: int, mode: str, share: float = 0.1, **guards: Any
    ) -> Call[RolloutStatus]:
        """Put ``version`` in front of ``share`` of the traffic (``canary``) or beside it
        (``shadow``); ``guards``: ``max_error_rate``, ``max_p99_ms``, ``min_agreement``,
        ``min_requests``."""
        body = {"version": version, "mode": mode, "share": share, **_params(**guards)}
        return Call("PUT", f"/models/{model}/rollout", _reads(RolloutStatus), json=body)

    @staticmethod
    def rollout(model: str) -> Call[RolloutStatus]:
        return Call("GET", f"/models/{model}/rollout", _reads(RolloutStatus))

    @staticmethod
    def promote_rollout(model: str) -> Call[RolloutStatus]:
        return Call("POST", f"/models/{model}/rollout/promote", _reads(RolloutStatus))

    @staticmethod
    def abort_rollout(model: str) -> Call[RolloutStatus]:
        return Call("DELETE", f"/models/{model}/rollout", _reads(RolloutStatus))

    # -- keys and the audit log --------------------------------------------------------------

    @staticmethod
    def create_key(
        name: str,
        scopes: Sequence[str],
        models: Sequence[str] | None = None,
        limits: Mapping[str, str] | None = None,
    ) -> Call[KeyCreated]:
        """A new API key (its ``key`` is in this answer only), with its own ``limits``
        (``{"predict": "600/minute", "uploads": "50/day", "jobs": "5/day", "stored":
        "2GB"}``) where given."""
        body = {
            "name": name,
            "scopes": list(scopes),
            **_params(models=models and list(models), limits=limits and dict(limits)),
        }
        return Call("POST", "/keys", _reads(KeyCreated), json=body)

    @staticmethod
    def keys() -> Call[KeyList]:
        return Call("GET", "/keys", _reads(KeyList))

    @staticmethod
    def revoke_key(key_id: str) -> Call[KeyInfo]:
        return Call("DELETE", f"/keys/{key_id}", _reads(KeyInfo))

    @staticmethod
    def audit(key_id: str | None = None, offset: int = 0, limit: int = 100) -> Call[AuditPage]:
        params = _params(key_id=key_id, offset=offset, limit=limit)
        return Call("GET", "/audit", _reads(AuditPage), params=params)


def _json(response: httpx.Response) -> Any:
    return response.json()


def _sync(build: Callable[P, Call[R]]) -> Callable[Concatenate[Client, P], R]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.run(build(*args, **kwargs))

    return functools.wraps(build)(method)


def _async(build: Callable[P, Call[R]]) -> Callable[Concatenate[AsyncClient, P], Awaitable[R]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.run(build(*args, **kwargs))

    return functools.wraps(build)(method)


class _Reconnect:
    """When a job's event stream drops: connect again after a growing pause, resuming
    after the last event seen, up to `RECONNECTS` times in a row."""

    def __init__(self, url: str, job_id: str, last_event_id: int | None) -> None:
        self.url, self.path = url, f"/finetune/{job_id}/events"
        self.after, self.failures = last_event_id, 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.after)} if self.after else {}

    def seen(self, event: Event) -> None:
        self.after, self.failures = event.id, 0

    def pause_after(self, exc: Exception) -> float:
        """How long to wait before connecting again; raises when it is time to give up."""
        self.failures += 1
        if self.failures > RECONNECTS:
            if isinstance(exc, httpx.TransportError):
                raise _unreachable(self.url, exc) from None
            raise APIError(0, "bad_stream", str(exc)) from None
        return min(0.5 * 2**self.failures, 10)


class _Base:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
    ) -> None:
        self.url = (url or os.environ.get("CONVSERVE_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("CONVSERVE_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = httpx.Timeout(timeout, connect=10.0)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """A service that cannot be reached raises `APIError` (``unreachable``)."""
        try:
            yield
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None


class Client(_Base):
    """The convserve API from synchronous code."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout)
        self.http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def run(self, call: Call[R]) -> R:
        """Send one call and read its answer; every failure raises `APIError`."""
        if call.download is not None:
            with (
                _partial(call.download) as partial,
                self._errors(),
                self.http.stream(call.method, call.path, **call.request()) as r,
            ):
                if r.is_error:
                    r.read()
                    _raise_for(r)
                with open(partial, "wb") as out:
                    for chunk in r.iter_bytes():
                        out.write(chunk)
            return call.read(r)
        if call.upload is not None:
            field, dataset = call.upload
            with open_dataset(dataset) as (name, fh):
                return self._send(call, {field: (name, fh)})
        return self._send(call)

    def _send(self, call: Call[R], files: Any = None) -> R:
        with self._errors():
            response = self.http.request(call.method, call.path, **call.request(files))
        _raise_for(response)
        return call.read(response)

    predict = _sync(Calls.predict)
    models = _sync(Calls.models)
    architectures = _sync(Calls.architectures)
    model = _sync(Calls.model)
    activate = _sync(Calls.activate)
    delete_version = _sync(Calls.delete_version)
    delete_model = _sync(Calls.delete_model)
    export = _sync(Calls.export)
    check_dataset = _sync(Calls.check_dataset)
    finetune = _sync(Calls.finetune)
    job = _sync(Calls.job)
    jobs = _sync(Calls.jobs)
    cancel = _sync(Calls.cancel)
    datasets = _sync(Calls.datasets)
    dataset = _sync(Calls.dataset)
    create_dataset = _sync(Calls.create_dataset)
    add_images = _sync(Calls.add_images)
    dataset_images = _sync(Calls.dataset_images)
    remove_image = _sync(Calls.remove_image)
    relabel_image = _sync(Calls.relabel_image)
    dataset_version = _sync(Calls.dataset_version)
    check_stored_dataset = _sync(Calls.check_stored_dataset)
    delete_dataset = _sync(Calls.delete_dataset)
    export_dataset = _sync(Calls.export_dataset)
    capture = _sync(Calls.capture)
    set_capture = _sync(Calls.set_capture)
    stop_capture = _sync(Calls.stop_capture)
    review = _sync(Calls.review)
    review_item = _sync(Calls.review_item)
    accept = _sync(Calls.accept)
    discard = _sync(Calls.discard)
    clear_review = _sync(Calls.clear_review)
    export_review = _sync(Calls.export_review)
    retrain = _sync(Calls.retrain)
    compare = _sync(Calls.compare)
    label_health = _sync(Calls.label_health)
    start_rollout = _sync(Calls.start_rollout)
    rollout = _sync(Calls.rollout)
    promote_rollout = _sync(Calls.promote_rollout)
    abort_rollout = _sync(Calls.abort_rollout)
    create_key = _sync(Calls.create_key)
    keys = _sync(Calls.keys)
    revoke_key = _sync(Calls.revoke_key)
    audit = _sync(Calls.audit)

    def events(self, job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's events until ``done``, connecting again (with ``Last-Event-ID``) when
        the stream drops."""
        stream = _Reconnect(self.url, job_id, last_event_id)
        while True:
            try:
                with connect_sse(self.http, "GET", stream.path, headers=stream.headers) as source:
                    if not source.response.is_success:
                        source.response.read()
                    _raise_for(source.response)
                    for sse in source.iter_sse():
                        event = _event(sse)
                        if event is None:
                            continue
                        stream.seen(event)
                        yield event
                        if event.type == "done":
                            return
            except (httpx.TransportError, SSEError) as exc:
                time.sleep(stream.pause_after(exc))

    def wait(self, job_id: str, on_event: Callable[[Event], None] | None = None) -> Job:
        """Follow the job to its end; returns it as `job` would."""
        for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        return self.job(job_id)


class AsyncClient(_Base):
    """The convserve API from asyncio code; the same methods as `Client`, awaited."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout)
        self.http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def run(self, call: Call[R]) -> R:
        """Send one call and read its answer; every failure raises `APIError`."""
        if call.download is not None:
            with _partial(call.download) as partial, self._errors():
                async with self.http.stream(call.method, call.path, **call.request()) as r:
                    if r.is_error:
                        await r.aread()
                        _raise_for(r)
                    with open(partial, "wb") as out:
                        async for chunk in r.aiter_bytes():
                            out.write(chunk)
            return call.read(r)
        if call.upload is not None:
            field, dataset = call.upload
            with open_dataset(dataset) as (name, fh):
                # httpx's async multipart wants bytes for a file it cannot read asynchronously.
                return await self._send(call, {field: (name, fh.read())})
        return await self._send(call)

    async def _send(self, call: Call[R], files: Any = None) -> R:
        with self._errors():
            response = await self.http.request(call.method, call.path, **call.request(files))
        _raise_for(response)
        return call.read(response)

    predict = _async(Calls.predict)
    models = _async(Calls.models)
    architectures = _async(Calls.architectures)
    model = _async(Calls.model)
    activate = _async(Calls.activate)
    delete_version = _async(Calls.delete_version)
    delete_model = _async(Calls.delete_model)
    export = _async(Calls.export)
    check_dataset = _async(Calls.check_dataset)
    finetune = _async(Calls.finetune)
    job = _async(Calls.job)
    jobs = _async(Calls.jobs)
    cancel = _async(Calls.cancel)
    datasets = _async(Calls.datasets)
    dataset = _async(Calls.dataset)
    create_dataset = _async(Calls.create_dataset)
    add_images = _async(Calls.add_images)
    dataset_images = _async(Calls.dataset_images)
    remove_image = _async(Calls.remove_image)
    relabel_image = _async(Calls.relabel_image)
    dataset_version = _async(Calls.dataset_version)
    check_stored_dataset = _async(Calls.check_stored_dataset)
    delete_dataset = _async(Calls.delete_dataset)
    export_dataset = _async(Calls.export_dataset)
    capture = _async(Calls.capture)
    set_capture = _async(Calls.set_capture)
    stop_capture = _async(Calls.stop_capture)
    review = _async(Calls.review)
    review_item = _async(Calls.review_item)
    accept = _async(Calls.accept)
    discard = _async(Calls.discard)
    clear_review = _async(Calls.clear_review)
    export_review = _async(Calls.export_review)
    retrain = _async(Calls.retrain)
    compare = _async(Calls.compare)
    label_health = _async(Calls.label_health)
    start_rollout = _async(Calls.start_rollout)
    rollout = _async(Calls.rollout)
    promote_rollout = _async(Calls.promote_rollout)
    abort_rollout = _async(Calls.abort_rollout)
    create_key = _async(Calls.create_key)
    keys = _async(Calls.keys)
    revoke_key = _async(Calls.revoke_key)
    audit = _async(Calls.audit)

    async def events(self, job_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """The job's events until ``done``, connecting again (with ``Last-Event-ID``) when
        the stream drops."""
        stream = _Reconnect(self.url, job_id, last_event_id)
        while True:
            try:
                async with aconnect_sse(
                    self.http, "GET", stream.path, headers=stream.headers
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                    _raise_for(source.response)
                    async for sse in source.aiter_sse():
                        event = _event(sse)
                        if event is None:
                            continue
                        stream.seen(event)
                        yield event
                        if event.type == "done":
                            return
            except (httpx.TransportError, SSEError) as exc:
                await asyncio.sleep(stream.pause_after(exc))

    async def wait(self, job_id: str, on_event: Callable[[Event], None] | None = None) -> Job:
        """Follow the job to its end; returns it as `job` would."""
        async for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        return await self.job(job_id)


@contextlib.contextmanager
def _partial(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path``, renamed to it when the block succeeds and removed
    when it does not."""
    partial = path.with_name(f".{path.name}.part")
    try:
        yield partial
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


class open_dataset:
    """``(filename, binary file)`` of a dataset to upload: an open archive as it is, an
    archive path opened, a folder zipped into a temporary file first."""

    def __init__(self, dataset: DatasetInput) -> None:
        self.dataset = dataset
        self._fh: IO[bytes] | None = None

    def __enter__(self) -> tuple[str, IO[bytes]]:
        if isinstance(self.dataset, tuple):  # (filename, open file)
            return self.dataset
        if not isinstance(self.dataset, str | os.PathLike):
            return "dataset.zip", self.dataset
        path = Path(self.dataset)
        if path.is_dir():
            self._fh = zip_folder(path)
            return f"{path.name or 'dataset'}.zip", self._fh
        self._fh = open(path, "rb")
        return path.name, self._fh

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()


def zip_folder(folder: Path) -> IO[bytes]:
    """A temporary zip of ``folder``'s files (stored, not compressed: images are already
    compressed), rewound for reading. Hidden files are left out."""
    import tempfile
    import zipfile

    out = tempfile.TemporaryFile()  # noqa: SIM115 (returned open, for the caller to close)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and not any(p.startswith(".") for p in rel.parts):
                zf.write(path, rel.as_posix())
    out.seek(0)
    return out
