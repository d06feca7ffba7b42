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

import io
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from httpx_sse import SSEError, aconnect_sse, connect_sse
from pydantic import BaseModel

from app.schemas import (
    ArchitectureList,
    DatasetChange,
    DatasetImages,
    DatasetInfo,
    DatasetList,
    DatasetReport,
    DatasetVersionDetail,
    Job,
    JobCreated,
    JobList,
    ModelDetail,
    ModelList,
    PredictResponse,
)

DEFAULT_URL = "http://localhost:8000"
# How often `events` connects again after the stream dropped, before it gives up.
RECONNECTS = 5

Model = TypeVar("Model", bound=BaseModel)
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


def _predict_request(
    images: Sequence[ImageInput], model: str | None, version: int | None, top_k: int
) -> dict[str, Any]:
    params: dict[str, Any] = {"top_k": top_k}
    if model:
        params["model"] = model
    if version is not None:
        params["version"] = version
    return {"params": params, "files": [_image_part(im, n) for n, im in enumerate(images)]}


def _finetune_form(model: str | None, promote: bool, params: dict[str, Any]) -> dict[str, str]:
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
    form = {k: v for k, v in form.items() if v != "None"}
    if model:
        form["model"] = model
    form["promote"] = str(promote).lower()
    return form


def _dataset_form(name: str | None, version: int | None) -> dict[str, str]:
    form = {"dataset_name": name, "dataset_version": version}
    return {k: str(v) for k, v in form.items() if v is not None}


def _event(sse: Any) -> Event:
    return Event(int(sse.id), sse.event, sse.json())


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

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        _raise_for(response)
        return response

    def _get(self, kind: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        return kind.model_validate(self._send(method, path, **kwargs).json())

    # -- predictions and models ------------------------------------------------------------

    def predict(
        self,
        images: Sequence[ImageInput],
        model: str | None = None,
        version: int | None = None,
        top_k: int = 5,
    ) -> PredictResponse:
        request = _predict_request(images, model, version, top_k)
        return self._get(PredictResponse, "POST", "/predict", **request)

    def models(self) -> ModelList:
        return self._get(ModelList, "GET", "/models")

    def architectures(self) -> ArchitectureList:
        return self._get(ArchitectureList, "GET", "/architectures")

    def model(self, name: str) -> ModelDetail:
        return self._get(ModelDetail, "GET", f"/models/{name}")

    def activate(self, name: str, version: int) -> ModelDetail:
        return self._get(ModelDetail, "POST", f"/models/{name}/versions/{version}/activate")

    def delete_version(self, name: str, version: int) -> ModelDetail:
        return self._get(ModelDetail, "DELETE", f"/models/{name}/versions/{version}")

    def delete_model(self, name: str) -> None:
        self._send("DELETE", f"/models/{name}")

    def export(self, name: str, version: int, format: str, target: str | os.PathLike[str]) -> Path:
        """Download the version in ``format`` (keras, savedmodel, tflite, onnx, openvino)
        as a zip to ``target`` (a file, or a folder to put ``NAME-vVERSION-FORMAT.zip`` in).
        The file appears whole or not at all."""
        path = Path(target)
        if path.is_dir():
            path = path / f"{name}-v{version}-{format}.zip"
        url = f"/models/{name}/versions/{version}/export"
        return self._download(url, path, params={"format": format})

    def _download(self, url: str, path: Path, **kwargs: Any) -> Path:
        """Stream a GET into ``path``, which appears whole or not at all."""
        partial = path.with_name(f".{path.name}.part")
        try:
            with self.http.stream("GET", url, **kwargs) as response:
                if response.is_error:
                    response.read()
                    _raise_for(response)
                with open(partial, "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise _unreachable(self.url, exc) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, path)
        return path

    # -- fine-tuning -----------------------------------------------------------------------

    def check_dataset(self, archive: IO[bytes], validation_split: float = 0.2) -> DatasetReport:
        files = {"dataset": ("dataset.zip", archive)}
        data = {"validation_split": str(validation_split)}
        return self._get(DatasetReport, "POST", "/datasets/check", files=files, data=data)

    def finetune(
        self,
        dataset: DatasetInput | None = None,
        model: str | None = None,
        promote: bool = True,
        dataset_name: str | None = None,
        dataset_version: int | None = None,
        **params: Any,
    ) -> JobCreated:
        """Queue a job on an uploaded dataset (a folder of class folders, an archive path,
        or an open archive), on a stored one (``dataset_name``, ``dataset_version``), or
        on an upload stored as ``dataset_name``'s next version; ``params`` are the
        training parameters."""
        form = _finetune_form(model, promote, params)
        form.update(_dataset_form(dataset_name, dataset_version))
        if dataset is None:
            return self._get(JobCreated, "POST", "/finetune", data=form)
        with open_dataset(dataset) as (name, fh):
            files = {"dataset": (name, fh)}
            return self._get(JobCreated, "POST", "/finetune", files=files, data=form)

    # -- datasets --------------------------------------------------------------------------

    def datasets(self) -> DatasetList:
        return self._get(DatasetList, "GET", "/datasets")

    def dataset(self, name: str) -> DatasetInfo:
        return self._get(DatasetInfo, "GET", f"/datasets/{name}")

    def create_dataset(self, name: str, archive: DatasetInput | None = None) -> DatasetChange:
        """A new dataset, empty or from a folder of class folders or an archive."""
        if archive is None:
            return self._get(DatasetChange, "POST", "/datasets", data={"name": name})
        with open_dataset(archive) as (filename, fh):
            files = {"archive": (filename, fh)}
            return self._get(DatasetChange, "POST", "/datasets", data={"name": name}, files=files)

    def add_images(
        self, name: str, label: str, images: Sequence[ImageInput], source: str = "api"
    ) -> DatasetChange:
        """Add images (paths, bytes, PIL images ...) to class ``label`` of ``name``."""
        files = [_image_part(im, n) for n, im in enumerate(images)]
        params = {"label": label, "source": source}
        return self._get(
            DatasetChange, "POST", f"/datasets/{name}/images", params=params, files=files
        )

    def dataset_images(
        self,
        name: str,
        version: int | None = None,
        label: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> DatasetImages:
        params = {"version": version, "label": label, "offset": offset, "limit": limit}
        params = {k: v for k, v in params.items() if v is not None}
        return self._get(DatasetImages, "GET", f"/datasets/{name}/images", params=params)

    def remove_image(self, name: str, image_id: str) -> DatasetChange:
        return self._get(DatasetChange, "DELETE", f"/datasets/{name}/images/{image_id}")

    def relabel_image(
        self, name: str, image_id: str, label: str, create_class: bool = False
    ) -> DatasetChange:
        body = {"label": label, "create_class": create_class}
        return self._get(DatasetChange, "PATCH", f"/datasets/{name}/images/{image_id}", json=body)

    def dataset_version(self, name: str, version: int) -> DatasetVersionDetail:
        return self._get(DatasetVersionDetail, "GET", f"/datasets/{name}/versions/{version}")

    def delete_dataset(self, name: str) -> None:
        self._send("DELETE", f"/datasets/{name}")

    def export_dataset(self, name: str, version: int, target: str | os.PathLike[str]) -> Path:
        """Download a dataset version as a zip of class folders to ``target`` (a file, or a
        folder to put ``NAME-vVERSION.zip`` in)."""
        path = Path(target)
        if path.is_dir():
            path = path / f"{name}-v{version}.zip"
        return self._download(f"/datasets/{name}/versions/{version}/export", path)

    def job(self, job_id: str) -> Job:
        return self._get(Job, "GET", f"/finetune/{job_id}")

    def jobs(self, limit: int = 100) -> JobList:
        return self._get(JobList, "GET", "/finetune", params={"limit": limit})

    def cancel(self, job_id: str) -> Job:
        return self._get(Job, "DELETE", f"/finetune/{job_id}")

    def events(self, job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's events until ``done``, connecting again (with ``Last-Event-ID``) when
        the stream drops."""
        after, failures = last_event_id, 0
        while True:
            headers = {"Last-Event-ID": str(after)} if after else {}
            try:
                with connect_sse(
                    self.http, "GET", f"/finetune/{job_id}/events", headers=headers
                ) as source:
                    if not source.response.is_success:
                        source.response.read()
                    _raise_for(source.response)
                    for sse in source.iter_sse():
                        event = _event(sse)
                        after, failures = event.id, 0
                        yield event
                        if event.type == "done":
                            return
            except (httpx.TransportError, SSEError) as exc:
                failures += 1
                if failures > RECONNECTS:
                    if isinstance(exc, httpx.TransportError):
                        raise _unreachable(self.url, exc) from None
                    raise APIError(0, "bad_stream", str(exc)) from None
                time.sleep(min(0.5 * 2**failures, 10))

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

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        _raise_for(response)
        return response

    async def _get(self, kind: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        return kind.model_validate((await self._send(method, path, **kwargs)).json())

    async def predict(
        self,
        images: Sequence[ImageInput],
        model: str | None = None,
        version: int | None = None,
        top_k: int = 5,
    ) -> PredictResponse:
        request = _predict_request(images, model, version, top_k)
        return await self._get(PredictResponse, "POST", "/predict", **request)

    async def models(self) -> ModelList:
        return await self._get(ModelList, "GET", "/models")

    async def architectures(self) -> ArchitectureList:
        return await self._get(ArchitectureList, "GET", "/architectures")

    async def model(self, name: str) -> ModelDetail:
        return await self._get(ModelDetail, "GET", f"/models/{name}")

    async def activate(self, name: str, version: int) -> ModelDetail:
        path = f"/models/{name}/versions/{version}/activate"
        return await self._get(ModelDetail, "POST", path)

    async def delete_version(self, name: str, version: int) -> ModelDetail:
        return await self._get(ModelDetail, "DELETE", f"/models/{name}/versions/{version}")

    async def delete_model(self, name: str) -> None:
        await self._send("DELETE", f"/models/{name}")

    async def finetune(
        self,
        dataset: DatasetInput | None = None,
        model: str | None = None,
        promote: bool = True,
        dataset_name: str | None = None,
        dataset_version: int | None = None,
        **params: Any,
    ) -> JobCreated:
        form = _finetune_form(model, promote, params)
        form.update(_dataset_form(dataset_name, dataset_version))
        if dataset is None:
            return await self._get(JobCreated, "POST", "/finetune", data=form)
        with open_dataset(dataset) as (name, fh):
            # httpx's async multipart wants bytes for a file it cannot read asynchronously.
            files = {"dataset": (name, fh.read())}
            return await self._get(JobCreated, "POST", "/finetune", files=files, data=form)

    async def job(self, job_id: str) -> Job:
        return await self._get(Job, "GET", f"/finetune/{job_id}")

    async def jobs(self, limit: int = 100) -> JobList:
        return await self._get(JobList, "GET", "/finetune", params={"limit": limit})

    async def cancel(self, job_id: str) -> Job:
        return await self._get(Job, "DELETE", f"/finetune/{job_id}")

    async def wait(self, job_id: str, on_event: Callable[[Event], None] | None = None) -> Job:
        async for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        return await self.job(job_id)

    async def events(self, job_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        import asyncio

        after, failures = last_event_id, 0
        while True:
            headers = {"Last-Event-ID": str(after)} if after else {}
            try:
                async with aconnect_sse(
                    self.http, "GET", f"/finetune/{job_id}/events", headers=headers
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                    _raise_for(source.response)
                    async for sse in source.aiter_sse():
                        event = _event(sse)
                        after, failures = event.id, 0
                        yield event
                        if event.type == "done":
                            return
            except (httpx.TransportError, SSEError) as exc:
                failures += 1
                if failures > RECONNECTS:
                    if isinstance(exc, httpx.TransportError):
                        raise _unreachable(self.url, exc) from None
                    raise APIError(0, "bad_stream", str(exc)) from None
                await asyncio.sleep(min(0.5 * 2**failures, 10))


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
