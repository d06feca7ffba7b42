"""TF Serving's REST API (``/v1/models/...``), over the same manager as ``/predict``.

Reference: tensorflow/serving ``g3doc/api_rest.md``. A model takes either encoded images
(input ``image_bytes``, ``DT_STRING``, values ``{"b64": "..."}``) or raw RGB pixels (input
``images``, ``DT_FLOAT``, ``[N, S, S, 3]`` with values 0-255, as the model is trained on);
it answers ``probabilities`` ``[N, C]`` in class-index order. Versions are numbers, or the
labels ``active`` (the served version) and ``latest`` (the newest). Errors are
``{"error": "..."}`` (plus the service's stable ``code``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from app.api.deps import Manager, Metrics, Predict, PredictRead, SettingsDep
from app.errors import ConvserveError
from app.protocols.common import b64decode, parse_version
from app.serving.inference import Inference, Outcome, bad_input, ranked
from app.serving.manager import ModelManager

router = APIRouter(prefix="/v1/models", tags=["tfserving"])

BYTES_INPUT, PIXELS_INPUT, OUTPUT = "image_bytes", "images", "probabilities"
SIGNATURE = "serving_default"
# The request bodies, as JSON Schema for the OpenAPI document (and the fuzz tests).
_B64 = {
    "type": "object",
    "description": "an encoded image (JPEG, PNG, BMP, GIF or WebP) in base64",
    "properties": {"b64": {"type": "string", "format": "byte", "minLength": 4}},
    "required": ["b64"],
    "additionalProperties": False,
}
_PIXELS = {"type": "array", "minItems": 1, "description": "an image as [S, S, 3] pixels, 0-255"}
_VALUE = {
    "anyOf": [
        _B64,
        _PIXELS,
        {
            "type": "object",
            "description": "one named input",
            "properties": {BYTES_INPUT: _B64, PIXELS_INPUT: _PIXELS},
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
        },
    ]
}
_SIGNATURE = {"type": "string", "enum": [SIGNATURE, ""]}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_PREDICT_BODY = _body(
    {
        "type": "object",
        "description": "'instances' (row format) or 'inputs' (columnar), not both",
        "properties": {
            "signature_name": _SIGNATURE,
            "instances": {"type": "array", "items": _VALUE, "minItems": 1},
            "inputs": {"anyOf": [{"type": "array", "items": _VALUE, "minItems": 1}, _VALUE]},
        },
        "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
    }
)
_CLASSIFY_BODY = _body(
    {
        "type": "object",
        "properties": {
            "signature_name": _SIGNATURE,
            "examples": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {BYTES_INPUT: _B64, PIXELS_INPUT: _PIXELS},
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": False,
                },
            },
        },
        "required": ["examples"],
    }
)


# -- status and metadata --------------------------------------------------------------------


def _version_status(manager: ModelManager, name: str, version: int | None) -> dict[str, Any]:
    state = manager.state(name)
    versions = manager.registry.versions(name)
    if version is not None:
        if version not in versions:
            raise ConvserveError(
                "version_not_found", f"model {name!r} has no version {version}", 404
            )
        versions = [version]
    if state.status == "failed":
        status = {"error_code": "UNKNOWN", "error_message": state.reason or "failed"}
        entries = [{"version": str(v), "state": "END", "status": status} for v in versions]
    else:
        ok = {"error_code": "OK", "error_message": ""}
        loading = state.status == "loading"
        entries = [
            {"version": str(v), "state": "LOADING" if loading else "AVAILABLE", "status": ok}
            for v in versions
        ]
    return {"model_version_status": sorted(entries, key=lambda e: -int(e["version"]))}


def _dims(*sizes: int) -> dict[str, Any]:
    return {"dim": [{"size": str(s), "name": ""} for s in sizes], "unknown_rank": False}


async def _metadata(manager: ModelManager, name: str, version: int | None) -> dict[str, Any]:
    loaded = await manager.resolve(name, version)
    size, classes = loaded.image_size, len(loaded.class_names)
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    SIGNATURE: {
                        "inputs": {
                            BYTES_INPUT: {
                                "dtype": "DT_STRING",
                                "tensor_shape": _dims(-1),
                                "name": f"{BYTES_INPUT}:0",
                            },
                            PIXELS_INPUT: {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": _dims(-1, size, size, 3),
                                "name": f"{PIXELS_INPUT}:0",
                            },
                        },
                        "outputs": {
                            OUTPUT: {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": _dims(-1, classes),
                                "name": f"{OUTPUT}:0",
                            }
                        },
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


@router.get("/{name}")
def model_status(name: str, manager: Manager) -> dict[str, Any]:
    """Every version's state."""
    return _version_status(manager, name, None)


@router.get("/{name}/versions/{version}")
def version_status(name: str, version: str, manager: Manager) -> dict[str, Any]:
    return _version_status(manager, name, parse_version(manager, name, version))


@router.get("/{name}/labels/{label}")
def label_status(name: str, label: str, manager: Manager) -> dict[str, Any]:
    version = parse_version(manager, name, label)
    if version is None:
        active = manager.state(name).active
        version = active.version if active else None
    return _version_status(manager, name, version)


@router.get("/{name}/metadata", dependencies=[PredictRead])
async def model_metadata(name: str, manager: Manager) -> dict[str, Any]:
    """The signature: inputs ``image_bytes`` or ``images``, output ``probabilities``."""
    return await _metadata(manager, name, None)


@router.get("/{name}/versions/{version}/metadata", dependencies=[PredictRead])
@router.get("/{name}/labels/{version}/metadata", dependencies=[PredictRead])
async def version_metadata(name: str, version: str, manager: Manager) -> dict[str, Any]:
    return await _metadata(manager, name, parse_version(manager, name, version))


# -- predict and classify -------------------------------------------------------------------


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise bad_input("the body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_input("the body must be a JSON object")
    signature = body.get("signature_name", SIGNATURE)
    if signature not in (SIGNATURE, ""):
        raise bad_input(f"unknown signature_name {signature!r}; the model has {SIGNATURE!r}")
    return body


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _unwrap(value: Any, where: str) -> Any:
    """A value given as ``{"image_bytes": ...}`` or ``{"images": ...}`` (named input)."""
    if isinstance(value, dict) and not _is_b64(value):
        known = [k for k in value if k in (BYTES_INPUT, PIXELS_INPUT)]
        if len(value) != 1 or not known:
            raise bad_input(
                f"{where}: name one input, {BYTES_INPUT!r} (encoded images) or"
                f" {PIXELS_INPUT!r} (pixels)"
            )
        return value[known[0]]
    return value


async def _infer_values(job: Inference, version: int | None, values: list[Any]) -> Outcome:
    """Encoded images (``{"b64": ...}`` each) or pixel arrays, one per instance."""
    if not values:
        raise bad_input("no instances given")
    if all(_is_b64(v) for v in values):
        blobs = [b64decode(v["b64"], f"instance {n}") for n, v in enumerate(values)]
        return await job.encoded(version, blobs)
    if any(_is_b64(v) or isinstance(v, str) for v in values):
        raise bad_input('give every instance as {"b64": "..."}, or every one as pixels')
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):  # OverflowError: 10**400
        raise bad_input("the instances are not a numeric tensor", "invalid_shape") from None
    return await job.tensor(version, array, "instances")


async def _predict(
    request: Request,
    name: str,
    version_text: str | None,
    manager: ModelManager,
    job: Inference,
) -> dict[str, Any]:
    body = await _json(request)
    async with job.counted():
        version = parse_version(manager, name, version_text)
        if "instances" in body and "inputs" in body:
            raise bad_input("give 'instances' (row format) or 'inputs' (columnar), not both")
        if "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list):
                raise bad_input("'instances' must be a list")
            values = [_unwrap(v, f"instance {n}") for n, v in enumerate(instances)]
            outcome = await _infer_values(job, version, values)
            return {"predictions": outcome.probabilities.tolist()}
        if "inputs" in body:
            inputs = _unwrap(body["inputs"], "inputs")
            if _is_b64(inputs):
                inputs = [inputs]
            if not isinstance(inputs, list):
                raise bad_input("'inputs' must be a list of images or a pixel tensor")
            outcome = await _infer_values(job, version, inputs)
            return {"outputs": outcome.probabilities.tolist()}
        raise bad_input("the body needs 'instances' or 'inputs'")


async def _classify(
    request: Request,
    name: str,
    version_text: str | None,
    manager: ModelManager,
    job: Inference,
) -> dict[str, Any]:
    body = await _json(request)
    async with job.counted():
        version = parse_version(manager, name, version_text)
        examples = body.get("examples")
        if not isinstance(examples, list) or not examples:
            raise bad_input('the body needs "examples": [{"image_bytes": {"b64": "..."}}, ...]')
        values = []
        for n, example in enumerate(examples):
            if not isinstance(example, dict) or len(example) != 1:
                raise bad_input(
                    f"example {n}: give one feature, {BYTES_INPUT!r} or {PIXELS_INPUT!r}"
                )
            values.append(_unwrap(example, f"example {n}"))
        outcome = await _infer_values(job, version, values)
        results = [
            [[label, score] for _, label, score in ranked(outcome.loaded, row)]
            for row in outcome.rows
        ]
        return {"results": results}


def _job(manager: ModelManager, metrics: Any, settings: Any, name: str) -> Inference:
    return Inference(manager, metrics, settings, "tfserving", name)


@router.post("/{name}:predict", openapi_extra=_PREDICT_BODY, dependencies=[Predict])
async def predict(
    request: Request, name: str, manager: Manager, metrics: Metrics, settings: SettingsDep
) -> dict[str, Any]:
    """Probabilities of every class, in class-index order, per instance."""
    return await _predict(request, name, None, manager, _job(manager, metrics, settings, name))


@router.post(
    "/{name}/versions/{version}:predict", openapi_extra=_PREDICT_BODY, dependencies=[Predict]
)
@router.post(
    "/{name}/labels/{version}:predict", openapi_extra=_PREDICT_BODY, dependencies=[Predict]
)
async def predict_version(
    request: Request,
    name: str,
    version: str,
    manager: Manager,
    metrics: Metrics,
    settings: SettingsDep,
) -> dict[str, Any]:
    """The same on a version (a number) or a label (``active``, ``latest``)."""
    job = _job(manager, metrics, settings, name)
    return await _predict(request, name, version, manager, job)


@router.post("/{name}:classify", openapi_extra=_CLASSIFY_BODY, dependencies=[Predict])
async def classify(
    request: Request, name: str, manager: Manager, metrics: Metrics, settings: SettingsDep
) -> dict[str, Any]:
    """Every class as ``[label, score]``, highest score first, per example."""
    return await _classify(request, name, None, manager, _job(manager, metrics, settings, name))


@router.post(
    "/{name}/versions/{version}:classify", openapi_extra=_CLASSIFY_BODY, dependencies=[Predict]
)
@router.post(
    "/{name}/labels/{version}:classify", openapi_extra=_CLASSIFY_BODY, dependencies=[Predict]
)
async def classify_version(
    request: Request,
    name: str,
    version: str,
    manager: Manager,
    metrics: Metrics,
    settings: SettingsDep,
) -> dict[str, Any]:
    job = _job(manager, metrics, settings, name)
    return await _classify(request, name, version, manager, job)
