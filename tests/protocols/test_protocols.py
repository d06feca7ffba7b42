"""TF Serving REST and KServe V2 against the real service on loopback, with the official
Triton client for V2 and requests shaped as TF Serving's docs and resnet_client.py send."""

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.data.images import load_image
from app.main import create_app
from tests.helpers import (
    hot_swap_under_load,
    image_bytes,
    pattern_image,
    toy_registry,
    write_toy_version,
)
from tests.jobs.service import Service

JPEG = image_bytes(pattern_image("checks", 48, seed=3), "JPEG", quality=90)
PNG = image_bytes(pattern_image("vstripes", 40, seed=1), "PNG")
B64 = base64.b64encode(JPEG).decode()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    toy_registry(root, second_seed=4)
    svc = Service(root, CONVSERVE_MAX_FILES_PER_REQUEST="4").start()
    yield svc
    svc.stop()


@pytest.fixture
def http(service):
    with service.client() as c:
        yield c


@pytest.fixture
def v2(service):
    client = triton.InferenceServerClient(service.url.removeprefix("http://"))
    yield client
    client.close()


def _predict_scores(http, version=None) -> tuple[int, list[float]]:
    params = {"top_k": 10} | ({"version": version} if version else {})
    r = http.post("/predict", files={"file": ("a.jpg", JPEG)}, params=params).json()
    top = sorted(r["predictions"][0]["top"], key=lambda t: t["index"])
    return r["version"], [t["score"] for t in top]


# -- the same answer through every protocol -------------------------------------------------


def test_every_protocol_gives_the_same_probabilities_and_version(http, v2):
    version, expected = _predict_scores(http)

    tf_row = http.post("/v1/models/toy:predict", json={"instances": [{"b64": B64}]}).json()
    tf_named = http.post(
        "/v1/models/toy:predict", json={"instances": [{"image_bytes": {"b64": B64}}]}
    ).json()
    tf_columnar = http.post("/v1/models/toy:predict", json={"inputs": [{"b64": B64}]}).json()
    classify = http.post(
        "/v1/models/toy:classify", json={"examples": [{"image_bytes": {"b64": B64}}]}
    ).json()

    v2_json = http.post(
        "/v2/models/toy/infer",
        json={
            "id": "req-1",
            "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [B64]}],
        },
    ).json()
    given = triton.InferInput("image_bytes", [1], "BYTES")
    given.set_data_from_numpy(np.array([JPEG], dtype=np.object_), binary_data=True)
    binary = v2.infer("toy", [given], outputs=[triton.InferRequestedOutput("probabilities")])

    for scores in (
        tf_row["predictions"][0],
        tf_named["predictions"][0],
        tf_columnar["outputs"][0],
        v2_json["outputs"][0]["data"],
        binary.as_numpy("probabilities")[0].tolist(),
    ):
        np.testing.assert_allclose(scores, expected, atol=1e-6)
    ranked = sorted(zip(["circle", "square"], expected, strict=True), key=lambda p: -p[1])
    assert [label for label, _ in classify["results"][0]] == [label for label, _ in ranked]
    np.testing.assert_allclose([s for _, s in classify["results"][0]], [s for _, s in ranked])
    assert v2_json["id"] == "req-1" and v2_json["model_version"] == str(version)
    assert v2_json["model_name"] == "toy" and binary.get_response()["model_version"] == "1"


def test_pixel_tensors_give_the_served_pixels_answer(http, v2):
    _, expected = _predict_scores(http)
    pixels = load_image(JPEG, 32)  # the pixels the service feeds the model for this photo

    r = http.post("/v1/models/toy:predict", json={"instances": [pixels.tolist()]}).json()
    np.testing.assert_allclose(r["predictions"][0], expected, atol=1e-6)
    r = http.post("/v1/models/toy:predict", json={"inputs": {"images": [pixels.tolist()]}}).json()
    np.testing.assert_allclose(r["outputs"][0], expected, atol=1e-6)

    fp32 = triton.InferInput("images", [1, 32, 32, 3], "FP32")
    fp32.set_data_from_numpy(pixels[None].astype(np.float32), binary_data=False)
    out = triton.InferRequestedOutput("probabilities", binary_data=False)
    result = v2.infer("toy", [fp32], outputs=[out])
    np.testing.assert_allclose(result.as_numpy("probabilities")[0], expected, atol=1e-6)

    uint8 = triton.InferInput("images", [2, 32, 32, 3], "UINT8")
    uint8.set_data_from_numpy(np.stack([pixels, pixels]), binary_data=True)
    result = v2.infer("toy", [uint8], model_version="1")
    assert result.as_numpy("probabilities").shape == (2, 2)
    np.testing.assert_allclose(result.as_numpy("probabilities")[1], expected, atol=1e-6)


def test_classification_extension_as_triton_sends_it(http, v2):
    _, expected = _predict_scores(http)
    given = triton.InferInput("image_bytes", [2], "BYTES")
    given.set_data_from_numpy(np.array([JPEG, PNG], dtype=np.object_), binary_data=True)
    out = triton.InferRequestedOutput("probabilities", binary_data=True, class_count=5)
    result = v2.infer("toy", [given], outputs=[out])
    classes = result.as_numpy("probabilities")
    assert classes.shape == (2, 2)  # the model has two classes: K is capped
    score, index, label = classes[0][0].decode().split(":")
    best = int(np.argmax(expected))
    assert (int(index), label) == (best, ["circle", "square"][best])
    assert abs(float(score) - expected[best]) < 1e-6

    json_out = triton.InferRequestedOutput("probabilities", binary_data=False, class_count=1)
    result = v2.infer("toy", [given], outputs=[json_out])
    assert result.as_numpy("probabilities").shape == (2, 1)


# -- metadata and health ----------------------------------------------------------------------


def test_v2_health_and_metadata_through_tritonclient(v2):
    assert v2.is_server_live() and v2.is_server_ready()
    assert v2.is_model_ready("toy") and v2.is_model_ready("toy", "2")
    assert not v2.is_model_ready("toy", "9") and not v2.is_model_ready("nope")
    server = v2.get_server_metadata()
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    meta = v2.get_model_metadata("toy")
    assert meta["name"] == "toy" and meta["versions"] == ["1", "2"]
    assert meta["inputs"][0] == {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}
    assert meta["inputs"][1]["shape"] == [-1, 32, 32, 3]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert v2.get_model_metadata("toy", "2")["parameters"]["version"] == "2"


def test_tfserving_status_and_metadata(http):
    status = http.get("/v1/models/toy").json()
    assert status == {
        "model_version_status": [
            {
                "version": v,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in ("2", "1")
        ]
    }
    assert http.get("/v1/models/toy/versions/2").json()["model_version_status"][0]["version"] == "2"
    active = http.get("/v1/models/toy/labels/active").json()["model_version_status"]
    assert [s["version"] for s in active] == ["1"]
    meta = http.get("/v1/models/toy/metadata").json()
    assert meta["model_spec"] == {"name": "toy", "signature_name": "", "version": "1"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    dims = signature["inputs"]["images"]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", "32", "32", "3"]
    assert [d["size"] for d in signature["outputs"]["probabilities"]["tensor_shape"]["dim"]] == [
        "-1",
        "2",
    ]
    latest = http.get("/v1/models/toy/labels/latest/metadata").json()
    assert latest["model_spec"]["version"] == "2"


def test_versions_and_labels_route_to_that_version(http):
    _, on_two = _predict_scores(http, version=2)
    for path in ("/v1/models/toy/versions/2:predict", "/v1/models/toy/labels/latest:predict"):
        r = http.post(path, json={"instances": [{"b64": B64}]}).json()
        np.testing.assert_allclose(r["predictions"][0], on_two, atol=1e-6)
    r = http.post(
        "/v2/models/toy/versions/2/infer",
        json={
            "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [B64]}]
        },
    ).json()
    assert r["model_version"] == "2"
    np.testing.assert_allclose(r["outputs"][0]["data"], on_two, atol=1e-6)


# -- bad input: the protocol's error shape and a 4xx, never a 500 ------------------------------


def _bytes_input(data, shape=(1,), datatype="BYTES"):
    return {
        "inputs": [
            {"name": "image_bytes", "shape": list(shape), "datatype": datatype, "data": data}
        ]
    }


@pytest.mark.parametrize(
    "path, body, status, code",
    [
        ("/v1/models/toy:predict", {"instances": [{"b64": "%%%"}]}, 400, "invalid_base64"),
        (
            "/v1/models/toy:predict",
            {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]},
            400,
            "invalid_image",
        ),
        ("/v1/models/toy:predict", {"instances": [[[1, 2, 3]]]}, 400, "invalid_shape"),
        ("/v1/models/toy:predict", {"instances": [[["a"]]]}, 400, "invalid_shape"),
        ("/v1/models/toy:predict", {"instances": []}, 400, "invalid_input"),
        ("/v1/models/toy:predict", {"nothing": 1}, 400, "invalid_input"),
        ("/v1/models/toy:predict", {"instances": [{"b64": B64}] * 5}, 413, "too_many_files"),
        ("/v1/models/toy:classify", {"examples": "x"}, 400, "invalid_input"),
        ("/v1/models/nope:predict", {"instances": [{"b64": B64}]}, 404, "model_not_found"),
        (
            "/v1/models/toy/versions/9:predict",
            {"instances": [{"b64": B64}]},
            404,
            "version_not_found",
        ),
        (
            "/v1/models/toy/labels/stable:predict",
            {"instances": [{"b64": B64}]},
            404,
            "version_not_found",
        ),
        ("/v2/models/toy/infer", _bytes_input(["%%%"]), 400, "invalid_base64"),
        (
            "/v2/models/toy/infer",
            _bytes_input([base64.b64encode(b"GIF89a junk").decode()]),
            400,
            "invalid_image",
        ),
        ("/v2/models/toy/infer", _bytes_input([B64], shape=(2,)), 400, "invalid_shape"),
        ("/v2/models/toy/infer", _bytes_input([1.0] * 3, (1, 1, 3), "FP32"), 400, "invalid_shape"),
        ("/v2/models/toy/infer", _bytes_input([B64], datatype="STRING"), 400, "invalid_datatype"),
        (
            "/v2/models/toy/infer",
            _bytes_input([300.0] * 3072, (1, 32, 32, 3), "FP32"),
            400,
            "invalid_pixels",
        ),
        ("/v2/models/toy/infer", {"inputs": []}, 400, "invalid_input"),
        # Found by the fuzz tests (these answered 500): a datatype or parameters that are
        # not of the right JSON type.
        (
            "/v2/models/toy/infer",
            {"inputs": [{"name": "image_bytes", "shape": [], "datatype": {}, "data": [None]}]},
            400,
            "invalid_datatype",
        ),
        ("/v2/models/toy/infer", {**_bytes_input([B64]), "parameters": [1]}, 400, "invalid_input"),
        # bench/fuzz.py found these (500): numbers that do not fit the datatype.
        (
            "/v2/models/toy/infer",
            _bytes_input([-44027445579], (1,), "UINT16"),
            400,
            "invalid_shape",
        ),
        ("/v1/models/toy:predict", {"instances": [[[[10**400] * 3]]]}, 400, "invalid_shape"),
        (
            "/v2/models/toy/infer",
            {**_bytes_input([B64]), "outputs": [{"name": "probabilities", "parameters": "x"}]},
            400,
            "invalid_input",
        ),
        (
            "/v2/models/toy/infer",
            {"inputs": [{**_bytes_input([B64])["inputs"][0], "parameters": 7}]},
            400,
            "invalid_input",
        ),
        ("/v2/models/nope/infer", _bytes_input([B64]), 404, "model_not_found"),
        ("/v2/models/toy/versions/7/infer", _bytes_input([B64]), 404, "version_not_found"),
    ],
)
def test_bad_input_gets_the_protocol_error_shape(http, path, body, status, code):
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "code"} and r.json()["code"] == code
    assert r.json()["error"]


def test_bad_bodies_and_oversized_bodies(http, service):
    for path in ("/v1/models/toy:predict", "/v2/models/toy/infer"):
        r = http.post(path, content=b"{not json")
        assert (r.status_code, r.json()["code"]) == (400, "invalid_json")
    r = http.post(
        "/v2/models/toy/infer",
        content=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": "999"},
    )
    assert r.status_code == 400 and "error" in r.json()
    too_big = b"x" * (2 * 4 * 10 * 1024 * 1024 + 2 * 1024 * 1024)
    r = http.post("/v2/models/toy/infer", content=too_big)
    assert (r.status_code, r.json()["code"]) == (413, "upload_too_large")
    assert http.get("/v2/models/nope").json()["code"] == "model_not_found"
    assert "error" in http.get("/v2/nothing/here").json()


def test_tritonclient_raises_the_servers_error(v2):
    bad = triton.InferInput("image_bytes", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException) as caught:
        v2.infer("toy", [bad])
    assert "not an image" in str(caught.value)
    with pytest.raises(InferenceServerException):
        v2.get_model_metadata("nope")


def test_metrics_count_each_protocol(http):
    http.post("/v1/models/toy:predict", json={"instances": [{"b64": B64}]})
    text = http.get("/metrics").text
    for protocol in ("tfserving", "kserve_v2", "convserve"):
        assert f'protocol="{protocol}",status="200"' in text


# -- hot swap under load through /infer ------------------------------------------------------


def test_hot_swap_under_load_through_infer(registry, settings_for):
    write_toy_version(registry, "toy", ["circle", "square"], seed=5)  # version 2
    body = json.dumps(_bytes_input([B64])).encode()

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v2/models/toy/infer", content=body)

    app = create_app(settings_for(max_queue_size=1024))
    results, swapped_at = hot_swap_under_load(app, send)
    assert [r.status_code for _, r in results] == [200] * len(results)
    versions = [r.json()["model_version"] for _, r in results]
    assert versions.count("1") >= 60 and versions.count("2") >= 60
    after = {r.json()["model_version"] for started, r in results if started > swapped_at}
    assert after == {"2"}


def test_kserve_rest_client_in_v2_mode(service, http):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    _, expected = _predict_scores(http)
    pixels = load_image(JPEG, 32)

    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        live = await client.is_server_live(service.url)
        ready = await client.is_server_ready(service.url)
        model_ready = await client.is_model_ready(service.url, "toy")
        encoded = InferInput("image_bytes", [1], "BYTES")
        encoded.set_data_from_numpy(np.array([JPEG], dtype=np.object_), binary_data=True)
        tensor = InferInput("images", [1, 32, 32, 3], "FP32")
        tensor.set_data_from_numpy(pixels[None].astype(np.float32), binary_data=False)
        answers = [
            await client.infer(
                service.url, InferRequest("toy", [given], request_id="k1"), model_name="toy"
            )
            for given in (encoded, tensor)
        ]
        return live, ready, model_ready, answers

    live, ready, model_ready, answers = asyncio.run(run())
    assert live and ready and model_ready
    for answer in answers:
        assert answer.model_name == "toy" and answer.id == "k1"
        np.testing.assert_allclose(answer.outputs[0].as_numpy()[0], expected, atol=1e-6)
