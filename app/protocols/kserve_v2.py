"""KServe V2, the Open Inference Protocol (``/v2/...``), with Triton's binary tensor data
and classification extensions, over the same manager as ``/predict``.

References: kserve/open-inference-protocol ``specification/protocol/inference_rest.md``;
triton-inference-server ``docs/protocol/extension_binary_data.md`` and
``extension_classification.md``. A model takes one input: ``BYTES`` ``[N]`` of encoded
images (raw in the binary extension, base64 strings in JSON), or a pixel tensor
``[N, S, S, 3]`` (``UINT8``, ``FP32``, ... raw RGB 0-255). It answers ``probabilities``
``FP32 [N, C]``, or with ``parameters.classification: K`` on that output ``BYTES [N, K]``
strings ``"score:index:label"``. The request's ``parameters.tta`` (``flip`` or ``crops``)
turns on test-time augmentation as ``/predict?tta=`` does. Errors are
``{"error": "..."}`` (plus the ``code``).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import Manager, Metrics, Predict, PredictRead, SettingsDep
from app.errors import ConvserveError
from app.protocols.common import b64decode, parse_version
from app.serving.inference import Inference, Outcome, bad_input, ranked
from app.serving.manager import ModelManager
from app.serving.tta import VIEWS

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

BYTES_INPUT, PIXELS_INPUT, OUTPUT = "image_bytes", "images", "probabilities"
HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
# The request body, as JSON Schema for the OpenAPI document (and the fuzz tests). The binary
# form is the JSON header followed by the tensors' bytes (HEADER_LENGTH says where).
_PARAMETERS = {"type": "object", "additionalProperties": True}
_INFER_REQUEST = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "additionalProperties": True,
            "properties": {
                "tta": {"type": "string", "enum": ["none", "flip", "crops"]},
                "abstain": {
                    "type": "boolean",
                    "description": "answer unknown under the version's threshold (false: never)",
                },
                "threshold": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "your own threshold on the top score",
                },
                "explain": {
                    "type": "string",
                    "enum": ["gradcam"],
                    "description": "add a 'gradcam' output: a base64 PNG map per image",
                },
            },
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [BYTES_INPUT, PIXELS_INPUT]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": ["BYTES", *DATATYPES]},
                    "parameters": _PARAMETERS,
                    "data": {"type": "array"},
                },
                "required": ["name", "shape", "datatype"],
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS},
                "required": ["name"],
            },
        },
    },
    "required": ["inputs"],
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _INFER_REQUEST},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


# -- server and model metadata --------------------------------------------------------------


@router.get("")
def server_metadata() -> dict[str, Any]:
    from app import __version__

    return {
        "name": "convserve",
        "version": __version__,
        "extensions": ["binary_tensor_data", "classification"],
    }


@router.get("/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "a model is not ready"}})
def ready(manager: Manager) -> JSONResponse:
    ok = manager.ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


async def _model_metadata(manager: ModelManager, name: str, version: int | None) -> dict:
    loaded = await manager.resolve(name, version)
    size, classes = loaded.image_size, len(loaded.class_names)
    return {
        "name": name,
        "versions": [str(v) for v in manager.registry.versions(name)],
        "platform": loaded.predictor.backend,
        "inputs": [
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, size, size, 3]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, classes]}],
        "parameters": {"version": str(loaded.version), "class_names": loaded.class_names},
    }


@router.get("/models/{name}", dependencies=[PredictRead])
async def model_metadata(name: str, manager: Manager) -> dict[str, Any]:
    """Inputs (send one: ``image_bytes`` or ``images``) and the output."""
    return await _model_metadata(manager, name, None)


@router.get("/models/{name}/versions/{version}", dependencies=[PredictRead])
async def version_metadata(name: str, version: str, manager: Manager) -> dict[str, Any]:
    return await _model_metadata(manager, name, parse_version(manager, name, version))


def _model_ready(manager: ModelManager, name: str, version: str | None) -> JSONResponse:
    state = manager.state(name)
    number = parse_version(manager, name, version)
    if number is not None and not manager.registry.exists(name, number):
        raise ConvserveError("version_not_found", f"model {name!r} has no version {number}", 404)
    ok = state.status == "ready"
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}/ready")
def model_ready(name: str, manager: Manager) -> JSONResponse:
    return _model_ready(manager, name, None)


@router.get("/models/{name}/versions/{version}/ready")
def version_ready(name: str, version: str, manager: Manager) -> JSONResponse:
    return _model_ready(manager, name, version)


# -- infer ----------------------------------------------------------------------------------


async def _read(request: Request) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary data after it (binary tensor data extension)."""
    raw = await request.body()
    length = request.headers.get(HEADER_LENGTH)
    if length is not None:
        if not (length.isascii() and length.isdigit()) or int(length) > len(raw):
            raise bad_input(f"{HEADER_LENGTH} {length!r} does not fit the body")
        head, binary = raw[: int(length)], raw[int(length) :]
    else:
        head, binary = raw, b""
    try:
        body = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        raise bad_input("the inference header is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_input("the inference request must be a JSON object")
    return body, binary


def _split_bytes(buffer: bytes, count: int, where: str) -> list[bytes]:
    """BYTES elements in binary form: each a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise bad_input(f"{where}: truncated BYTES element")
        (size,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + size > len(buffer):
            raise bad_input(f"{where}: a BYTES element runs past the data")
        items.append(buffer[offset : offset + size])
        offset += size
    if len(items) != count:
        raise bad_input(f"{where}: {len(items)} elements for a shape of {count}", "invalid_shape")
    return items


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flat(item)]
    return [data]


class _Input:
    """The request's one input, decoded: encoded images or a pixel tensor."""

    def __init__(self, spec: Any, binary: bytes) -> None:
        if not isinstance(spec, dict):
            raise bad_input("an input must be an object with name, shape, datatype and data")
        self.name = str(spec.get("name", ""))
        where = f"input {self.name!r}"
        shape, datatype = spec.get("shape"), spec.get("datatype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad_input(f"{where}: shape must be a list of sizes", "invalid_shape")
        count = int(np.prod(shape)) if shape else 1
        size = _parameters(spec, where).get("binary_data_size")
        self.blobs: list[bytes] | None = None
        self.array: np.ndarray | None = None
        if datatype == "BYTES":
            if len(shape) != 1:
                raise bad_input(f"{where}: BYTES images take shape [N]", "invalid_shape")
            if size is not None:
                self.blobs = _split_bytes(_take(binary, size, where), count, where)
            else:
                values = _flat(spec.get("data"))
                if len(values) != count:
                    raise bad_input(
                        f"{where}: {len(values)} values for shape {shape}", "invalid_shape"
                    )
                self.blobs = [b64decode(v, where) for v in values]
        elif isinstance(datatype, str) and datatype in DATATYPES:
            dtype = DATATYPES[datatype]
            try:
                if size is not None:
                    array = np.frombuffer(_take(binary, size, where), dtype=dtype)
                else:
                    array = np.asarray(_flat(spec.get("data")), dtype=dtype)
                self.array = array.reshape(shape)
            except (ValueError, TypeError, OverflowError):  # OverflowError: -1 as UINT8
                raise bad_input(
                    f"{where}: the data does not fit shape {shape} of {datatype}", "invalid_shape"
                ) from None
        else:
            raise bad_input(
                f"{where}: datatype {datatype!r}; send BYTES (encoded images) or a pixel tensor"
                f" ({', '.join(DATATYPES)})",
                "invalid_datatype",
            )


def _parameters(spec: dict[str, Any], where: str) -> dict[str, Any]:
    """``spec["parameters"]``: an object, or absent."""
    params = spec.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise bad_input(f"{where}: 'parameters' must be an object")
    return params


def _explanations(explained: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``gradcam`` output: a base64 RGBA PNG per image, with the classes and layer."""
    return {
        "name": "gradcam",
        "datatype": "BYTES",
        "shape": [len(explained)],
        "data": [e["png"] for e in explained],
        "parameters": {
            "labels": [e["label"] for e in explained],
            "layer": explained[0]["layer"] if explained else None,
        },
    }


def _abstention(params: dict[str, Any]) -> tuple[bool, float | None]:
    """``parameters.abstain`` (false: never unknown) and ``parameters.threshold`` (the
    client's own, 0-1)."""
    abstain = params.get("abstain", True)
    if not isinstance(abstain, bool):
        raise bad_input("parameters.abstain must be true or false")
    threshold = params.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 1
    ):
        raise bad_input("parameters.threshold must be a number from 0 to 1")
    return abstain, None if threshold is None else float(threshold)


def _take(binary: bytes, size: Any, where: str) -> bytes:
    if not isinstance(size, int) or size < 0 or size > len(binary):
        raise bad_input(f"{where}: binary_data_size {size!r} does not fit the binary data")
    return binary[:size]


def _outputs(body: dict[str, Any], outcome: Outcome) -> tuple[list[dict[str, Any]], bytes]:
    """The response's outputs and their binary data (in order)."""
    binary_default = bool(_parameters(body, "the request").get("binary_data_output", False))
    requested = body.get("outputs") or [{"name": OUTPUT}]
    if not isinstance(requested, list):
        raise bad_input("'outputs' must be a list")
    probabilities = outcome.probabilities
    outputs, chunks = [], []
    for spec in requested:
        if not isinstance(spec, dict) or spec.get("name") != OUTPUT:
            name = spec.get("name") if isinstance(spec, dict) else spec
            raise bad_input(f"unknown output {name!r}; the model has {OUTPUT!r}")
        out_params = _parameters(spec, f"output {OUTPUT!r}")
        binary = bool(out_params.get("binary_data", binary_default))
        k = out_params.get("classification")
        if k is not None:
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise bad_input("classification must be a positive number of classes")
            k = min(k, probabilities.shape[1])
            labels = [
                [
                    f"{score:f}:{index}:{label}"
                    for index, label, score in ranked(outcome.loaded, row, k)
                ]
                for row in probabilities
            ]
            output: dict[str, Any] = {
                "name": OUTPUT,
                "datatype": "BYTES",
                "shape": [len(labels), k],
            }
            if binary:
                data = b"".join(
                    struct.pack("<I", len(s.encode())) + s.encode() for row in labels for s in row
                )
            else:
                output["data"] = [s for row in labels for s in row]
        else:
            output = {"name": OUTPUT, "datatype": "FP32", "shape": list(probabilities.shape)}
            if binary:
                data = probabilities.astype("<f4").tobytes()
            else:
                output["data"] = probabilities.ravel().tolist()
        if binary:
            output["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        outputs.append(output)
    return outputs, b"".join(chunks)


async def _infer(
    request: Request,
    name: str,
    version_text: str | None,
    manager: ModelManager,
    job: Inference,
) -> Response:
    body, binary = await _read(request)
    async with job.counted():
        version = parse_version(manager, name, version_text)
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1:
            raise bad_input(
                f"give exactly one input: {BYTES_INPUT!r} (BYTES, encoded images) or"
                f" {PIXELS_INPUT!r} (a pixel tensor [N, S, S, 3])"
            )
        given = _Input(inputs[0], binary)
        params = _parameters(body, "the request")
        tta = params.get("tta", "none")
        if tta not in VIEWS:
            raise bad_input(f"parameters.tta must be one of {', '.join(VIEWS)}, not {tta!r}")
        job.abstain, job.threshold = _abstention(params)
        explain = params.get("explain")
        if explain not in (None, "gradcam"):
            raise bad_input(f"parameters.explain must be 'gradcam', not {explain!r}")
        if explain is not None:
            array = given.array
            count = len(given.blobs) if given.blobs is not None else 0
            count = len(array) if array is not None else count
            job.check_explain(count)
        if given.blobs is not None:
            outcome = await job.encoded(version, given.blobs, tta)
        else:
            assert given.array is not None
            outcome = await job.tensor(version, given.array, f"input {given.name!r}", tta)
        outputs, data = _outputs(body, outcome)
        if explain is not None:
            seen = given.blobs if given.blobs is not None else np.asarray(given.array)
            outputs.append(_explanations(await job.explain(outcome, seen)))
    answer: dict[str, Any] = {
        "model_name": name,
        "model_version": str(outcome.loaded.version),
        # Per image, whether the version abstains ("unknown"); the outputs still rank every
        # class.
        "parameters": {"unknown": outcome.unknown},
        "outputs": outputs,
    }
    if outcome.similarity is not None:  # how near each image is to the training images
        answer["parameters"]["similarity"] = [round(s, 6) for s in outcome.similarity]
    if "id" in body:
        answer["id"] = body["id"]
    head = json.dumps(answer).encode()
    if not data:
        return Response(head, media_type="application/json")
    return Response(
        head + data,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )


@router.post("/models/{name}/infer", openapi_extra=_BODY, dependencies=[Predict])
async def infer(
    request: Request, name: str, manager: Manager, metrics: Metrics, settings: SettingsDep
) -> Response:
    """Classify a batch: probabilities, or the top K as ``score:index:label``."""
    job = Inference(manager, metrics, settings, "kserve_v2", name)
    return await _infer(request, name, None, manager, job)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=_BODY, dependencies=[Predict])
async def infer_version(
    request: Request,
    name: str,
    version: str,
    manager: Manager,
    metrics: Metrics,
    settings: SettingsDep,
) -> Response:
    job = Inference(manager, metrics, settings, "kserve_v2", name)
    return await _infer(request, name, version, manager, job)
