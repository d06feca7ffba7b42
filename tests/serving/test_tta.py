"""Test-time augmentation: the views, and what /predict and KServe V2 answer with them."""

import numpy as np
import pytest
from PIL import Image

from app.data.images import load_image
from app.nets.transfer import load_classifier
from app.serving.tta import combine, decode_size, expand, views
from tests.helpers import image_bytes, pattern_image


def test_crops_are_the_centre_and_corners_and_their_mirrors():
    big = decode_size(224, "crops")
    assert big == 256
    image = np.random.default_rng(0).integers(0, 255, (big, big, 3), dtype=np.uint8)
    got = views(image, "crops", 224)
    assert len(got) == 10 and all(v.shape == (224, 224, 3) for v in got)
    np.testing.assert_array_equal(got[0], image[16:240, 16:240])  # centre
    np.testing.assert_array_equal(got[1], image[:224, :224])  # top left
    np.testing.assert_array_equal(got[4], image[32:, 32:])  # bottom right
    np.testing.assert_array_equal(got[5], image[16:240, 16:240][:, ::-1])  # mirrored centre


def test_flip_is_the_image_and_its_mirror_and_combine_averages_per_image():
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(3)]
    images[0][:, 0] = 255
    flat = expand(images, "flip", 4)
    assert len(flat) == 6
    np.testing.assert_array_equal(flat[1][:, 3], 255)
    rows = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.2, 0.8])] * 2
    assert np.allclose(combine(rows, "flip"), [[0.5, 0.5], [0.6, 0.4], [0.1, 0.9]])


def test_a_pixel_tensor_is_enlarged_before_cropping():
    image = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    got = views(image, "crops", 32)
    assert len(got) == 10 and got[0].shape == (32, 32, 3)


def _scores(response) -> np.ndarray:
    top = sorted(response.json()["predictions"][0]["top"], key=lambda t: t["index"])
    return np.array([t["score"] for t in top])


@pytest.mark.parametrize("tta", ["flip", "crops"])
def test_predict_with_tta_averages_the_views_as_the_model_scores_them(client, registry, tta):
    # Not symmetric, so that its mirror and crops look different to the model.
    ramp = np.linspace(0, 255, 90, dtype=np.float32)
    pixels = np.stack(
        [np.tile(ramp, (90, 1)), np.tile(ramp[:, None], (1, 90)), 255 - np.tile(ramp, (90, 1))], -1
    )
    photo = image_bytes(Image.fromarray(pixels.astype(np.uint8)), "JPEG", quality=92)
    r = client.post("/predict", params={"tta": tta, "top_k": 2}, files={"file": ("p.jpg", photo)})
    assert r.status_code == 200, r.text
    model = load_classifier(registry.model_path("toy", 1))
    decoded = load_image(photo, decode_size(32, tta))
    expected = np.asarray(model(np.stack(views(decoded, tta, 32)).astype("float32"))).mean(0)
    np.testing.assert_allclose(_scores(r), expected, atol=1e-5)
    plain = client.post("/predict", params={"top_k": 2}, files={"file": ("p.jpg", photo)})
    assert not np.allclose(_scores(plain), _scores(r), atol=1e-4)  # it did change something


def test_views_that_cannot_fit_the_queue_are_refused_with_the_number_that_fits(
    registry, settings_for
):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings_for(max_queue_size=25))) as c:
        files = [
            ("file", (f"{i}.png", image_bytes(pattern_image("dark", 32), "PNG"))) for i in range(3)
        ]
        r = c.post("/predict", params={"tta": "crops"}, files=files)
        assert (r.status_code, r.json()["code"]) == (413, "too_many_files")
        assert "send at most 2" in r.json()["detail"]
        assert c.post("/predict", params={"tta": "flip"}, files=files).status_code == 200


def test_unknown_tta_is_a_422(client):
    photo = image_bytes(pattern_image("dark", 32), "PNG")
    r = client.post("/predict", params={"tta": "rotate"}, files={"file": ("a.png", photo)})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_parameters")


def test_kserve_v2_takes_tta_as_a_request_parameter(client):
    import base64

    photo = image_bytes(pattern_image("checks", 48, seed=3), "JPEG", quality=90)
    body = {
        "inputs": [
            {"name": "image_bytes", "shape": [1], "datatype": "BYTES",
             "data": [base64.b64encode(photo).decode()]}
        ],
        "parameters": {"tta": "flip"},
    }  # fmt: skip
    r = client.post("/v2/models/toy/infer", json=body)
    assert r.status_code == 200, r.text
    served = client.post("/predict", params={"tta": "flip"}, files={"file": ("p.jpg", photo)})
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], _scores(served), atol=1e-6)
    body["parameters"] = {"tta": "sideways"}
    bad = client.post("/v2/models/toy/infer", json=body)
    assert bad.status_code == 400 and "parameters.tta" in bad.json()["error"]
