"""Calibrated scores and "unknown" (app/serving/calibration.py), and how /predict and
KServe V2 answer with them."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.serving.calibration import (
    abstention_threshold,
    calibrate,
    calibration_record,
    fit_temperature,
    reliability,
)
from app.storage.registry import ModelRegistry
from tests.fakes import write_fake_version
from tests.helpers import image_bytes


def _overconfident(n=2000, classes=4, seed=0):
    """A toy model that is right about 70% of the time but says 0.95 or more: its logits
    are five times what they should be."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    honest = rng.normal(0, 1, (n, classes))
    honest[np.arange(n), labels] += 1.5
    logits = 5 * honest
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32), labels


def test_the_fitted_temperature_lowers_the_calibration_error():
    probs, labels = _overconfident()
    temperature = fit_temperature(probs, labels)
    assert 3 < temperature < 7  # the logits were five times too large
    before = reliability(probs, labels)["ece"]
    after = reliability(calibrate(probs, temperature), labels)["ece"]
    assert before > 0.15 and after < 0.05, (before, after)


def test_calibration_keeps_the_ranking_and_sums_to_one():
    probs, _ = _overconfident(n=50)
    calibrated = calibrate(probs, 3.0)
    assert np.allclose(calibrated.sum(axis=1), 1, atol=1e-5)
    assert (calibrated.argmax(axis=1) == probs.argmax(axis=1)).all()


@pytest.mark.parametrize("keep", [0.9, 0.97, 1.0])
def test_the_threshold_keeps_the_stated_share_of_known_images(keep):
    probs, _ = _overconfident(n=500, seed=1)
    threshold = abstention_threshold(probs, keep)
    kept = (probs.max(axis=1) >= threshold).mean()
    assert keep <= kept <= keep + 1 / 500 + 1e-9


def test_the_record_a_version_keeps():
    probs, labels = _overconfident(n=300)
    record = calibration_record(probs, labels, 0.97)
    calibration, abstention = record["calibration"], record["abstention"]
    assert calibration["ece_after"] < calibration["ece_before"]
    assert sum(b["count"] for b in calibration["reliability_after"]) == 300
    assert abstention["keep_share"] == 0.97 and abstention["kept_share"] >= 0.97


@pytest.fixture
def trusting(tmp_path, fake_models, settings_for):
    """A fake version that scores its top class 0.9 before calibration, with a temperature
    of 2 and a threshold of 0.8; and a second one with "square" as its negative class."""
    registry = ModelRegistry(tmp_path / "models")
    write_fake_version(
        registry,
        "toy",
        ["circle", "square"],
        calibration={"temperature": 2.0, "ece_before": 0.1, "ece_after": 0.02},
        abstention={"score": "calibrated top probability", "threshold": 0.8, "keep_share": 0.97},
    )
    registry.set_active("toy", 1)
    write_fake_version(
        registry,
        "toy",
        ["circle", "square"],
        abstention={"threshold": 0.0, "keep_share": 1.0, "negative_class": "square"},
    )
    with TestClient(create_app(settings_for())) as client:
        yield client


DARK = image_bytes(Image.new("RGB", (40, 40), (10, 10, 10)))
BRIGHT = image_bytes(Image.new("RGB", (40, 40), (250, 250, 250)))


def _answer(client, **params):
    r = client.post("/predict", params=params, files={"file": ("d.png", DARK)})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def test_predict_serves_calibrated_scores_and_abstains_under_the_threshold(trusting):
    answer = _answer(trusting)
    # 0.9 against 0.1 at a temperature of 2: 0.75 against 0.25.
    assert answer["top"][0]["label"] == "circle"
    assert answer["top"][0]["score"] == pytest.approx(0.75, abs=1e-4)
    assert answer["unknown"] is True  # 0.75 is under the version's 0.8
    assert len(answer["top"]) == 2  # the classes are still listed


def test_the_client_can_turn_abstention_off_or_give_its_own_threshold(trusting):
    assert _answer(trusting, abstain="false")["unknown"] is False
    assert _answer(trusting, threshold=0.7)["unknown"] is False
    assert _answer(trusting, threshold=0.76)["unknown"] is True
    r = trusting.post("/predict", params={"threshold": 2}, files={"file": DARK})
    assert r.status_code == 422


def test_a_negative_class_is_answered_as_unknown(trusting):
    r = trusting.post(
        "/predict",
        params={"version": 2},
        files=[("file", ("d.png", DARK)), ("file", ("b.png", BRIGHT))],
    )
    dark, bright = r.json()["predictions"]
    assert (dark["top"][0]["label"], dark["unknown"]) == ("circle", False)
    assert (bright["top"][0]["label"], bright["unknown"]) == ("square", True)


def test_kserve_carries_unknown_and_takes_the_same_parameters(trusting):
    import base64

    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(DARK).decode()],
            }
        ]
    }
    r = trusting.post("/v2/models/toy/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["unknown"] == [True]
    assert r.json()["outputs"][0]["data"][0] == pytest.approx(0.75, abs=1e-4)
    body["parameters"] = {"abstain": False}
    assert trusting.post("/v2/models/toy/infer", json=body).json()["parameters"]["unknown"] == [
        False
    ]
    body["parameters"] = {"threshold": "high"}
    assert trusting.post("/v2/models/toy/infer", json=body).status_code == 400


def test_a_version_without_calibration_serves_as_before(client):
    r = client.post("/predict", files={"file": ("d.png", DARK)})
    answer = r.json()["predictions"][0]
    assert answer["unknown"] is False
    assert sum(label["score"] for label in answer["top"]) == pytest.approx(1, abs=1e-4)


def test_explain_gradcam_answers_a_map_per_image(client):
    """On the tiny Keras test model (a plain model, no nested network)."""
    r = client.post(
        "/predict",
        params={"explain": "gradcam"},
        files=[("file", ("d.png", DARK)), ("file", ("b.png", BRIGHT))],
    )
    assert r.status_code == 200, r.text
    import base64
    import io

    for prediction in r.json()["predictions"]:
        explanation = prediction["explanation"]
        assert explanation["method"] == "gradcam"
        assert explanation["label"] == prediction["top"][0]["label"]
        with Image.open(io.BytesIO(base64.b64decode(explanation["png"]))) as png:
            assert (png.format, png.mode, png.size) == ("PNG", "RGBA", (32, 32))
    chosen = client.post(
        "/predict",
        params={"explain": "gradcam", "explain_class": "square"},
        files={"file": ("d.png", DARK)},
    )
    assert chosen.json()["predictions"][0]["explanation"]["label"] == "square"
    unknown = client.post(
        "/predict", params={"explain": "gradcam", "explain_class": "x"}, files={"file": DARK}
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "class_not_found")
    plain = client.post("/predict", files={"file": ("d.png", DARK)})
    assert plain.json()["predictions"][0]["explanation"] is None


def test_explanations_are_capped_per_request(registry, settings_for):
    with TestClient(create_app(settings_for(max_explained_images=1))) as c:
        r = c.post(
            "/predict",
            params={"explain": "gradcam"},
            files=[("file", ("d.png", DARK)), ("file", ("b.png", BRIGHT))],
        )
    assert (r.status_code, r.json()["code"]) == (413, "too_many_explanations")
    assert "at most 1" in r.json()["detail"]


def test_the_version_page_shows_the_reliability_diagram(tmp_path, fake_models, settings_for):
    probs, labels = _overconfident(n=300, classes=2)
    record = calibration_record(probs, labels, 0.97)
    registry = ModelRegistry(tmp_path / "models")
    write_fake_version(registry, "toy", ["circle", "square"], **record)
    registry.set_active("toy", 1)
    with TestClient(create_app(settings_for())) as client:
        page = client.get("/console/models/toy").text
        detail = client.get("/models/toy").json()["version_details"][0]
    assert detail["calibration"]["temperature"] == record["calibration"]["temperature"]
    assert detail["abstention"]["threshold"] == record["abstention"]["threshold"]
    assert "Calibrated scores" in page and 'id="reliability"' in page
    for name in ("before", "after"):
        points = len(record["calibration"][f"reliability_{name}"])
        assert page.count(f'class="point-{name}"') == points > 0
    assert f"{record['calibration']['ece_after']:.3f}" in page
    assert "below a calibrated top score of" in page


def test_the_version_page_states_the_nearest_rule(nearest):
    page = nearest.get("/console/models/toy").text
    assert "less similar than 0.900 to those of the nearest of its 2 training" in page


def test_kserve_explains_on_request(client):
    import base64
    import io

    from app.data.images import load_image

    encoded = {
        "name": "image_bytes",
        "datatype": "BYTES",
        "shape": [1],
        "data": [base64.b64encode(DARK).decode()],
    }
    pixels = load_image(BRIGHT, 32)
    tensor = {
        "name": "images",
        "datatype": "UINT8",
        "shape": [1, 32, 32, 3],
        "data": pixels.ravel().tolist(),
    }
    for given in (encoded, tensor):
        body = {"inputs": [given], "parameters": {"explain": "gradcam"}}
        r = client.post("/v2/models/toy/infer", json=body)
        assert r.status_code == 200, r.text
        gradcam = next(o for o in r.json()["outputs"] if o["name"] == "gradcam")
        assert gradcam["shape"] == [1] and gradcam["parameters"]["labels"][0] in (
            "circle",
            "square",
        )
        with Image.open(io.BytesIO(base64.b64decode(gradcam["data"][0]))) as png:
            assert png.size == (32, 32)
    bad = {"inputs": [encoded], "parameters": {"explain": "lime"}}
    assert client.post("/v2/models/toy/infer", json=bad).status_code == 400


# -- "unknown" by the nearest training image (app/serving/features.py) ----------------------


def test_the_nearest_similarity_and_its_threshold():
    from app.serving.calibration import keep_threshold
    from app.serving.features import FeatureBank, nearest_record

    rng = np.random.default_rng(0)
    bank = FeatureBank.of(rng.normal(size=(50, 8)), "dense")
    assert np.allclose(np.linalg.norm(bank.features, axis=1), 1, atol=1e-5)
    # A bank image's own features (any length) are its own nearest: similarity 1.
    assert bank.nearest(3 * bank.features[:5]) == pytest.approx(np.ones(5), abs=1e-5)
    assert (bank.nearest(-bank.features[:5]) < 0.9).all()
    similarity = rng.uniform(size=400)
    for keep in (0.9, 0.97, 1.0):
        kept = (similarity >= keep_threshold(similarity, keep)).mean()
        assert keep <= kept <= keep + 1 / 400 + 1e-9
    record = nearest_record(bank, rng.normal(size=(100, 8)), 0.97)
    assert record["method"] == "nearest" and record["bank_images"] == 50
    assert record["kept_share"] >= 0.97


@pytest.fixture
def nearest(tmp_path, fake_models, settings_for):
    """Fake versions that answer unknown by the nearest training image: version 1 trained
    on dark images only (its bank), with a similarity threshold of 0.9 and a top-score
    threshold of 0.95; version 2 the same without its features file, version 3 with a
    damaged one."""
    registry = ModelRegistry(tmp_path / "models")
    abstention = {
        "method": "nearest",
        "score": "similarity",
        "threshold": 0.9,
        "keep_share": 0.97,
        "top_score_threshold": 0.95,
        "bank_images": 2,
    }
    dark = np.array([[0.05, 0.95], [0.02, 0.98]])
    write_fake_version(registry, "toy", ["circle", "square"], bank=dark, abstention=abstention)
    registry.set_active("toy", 1)
    write_fake_version(registry, "toy", ["circle", "square"], abstention=abstention)
    write_fake_version(registry, "toy", ["circle", "square"], bank=dark, abstention=abstention)
    (registry.version_dir("toy", 3) / "features.npz").write_bytes(b"cut short")
    with TestClient(create_app(settings_for())) as client:
        yield client


def test_a_photo_far_from_every_training_image_is_unknown(nearest):
    r = nearest.post("/predict", files=[("file", ("d.png", DARK)), ("file", ("b.png", BRIGHT))])
    assert r.status_code == 200, r.text
    dark, bright = r.json()["predictions"]
    # Both are top-scored 0.9: only how near they are to the training images tells them apart.
    assert dark["top"][0]["score"] == bright["top"][0]["score"] == pytest.approx(0.9)
    assert dark["unknown"] is False and dark["similarity"] > 0.99
    assert bright["unknown"] is True and bright["similarity"] < 0.2
    assert bright["top"][0]["label"] == "square"  # still listed
    # The client's own threshold is on the top score, as for every version.
    r = nearest.post("/predict", params={"threshold": 0.85}, files={"file": ("b.png", BRIGHT)})
    assert r.json()["predictions"][0]["unknown"] is False
    r = nearest.post("/predict", params={"abstain": "false"}, files={"file": ("b.png", BRIGHT)})
    assert r.json()["predictions"][0]["unknown"] is False


def test_kserve_carries_the_similarity(nearest):
    import base64

    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [2],
                "data": [base64.b64encode(b).decode() for b in (DARK, BRIGHT)],
            }
        ]
    }
    r = nearest.post("/v2/models/toy/infer", json=body)
    assert r.status_code == 200, r.text
    parameters = r.json()["parameters"]
    assert parameters["unknown"] == [False, True]
    assert parameters["similarity"][0] > 0.99 and parameters["similarity"][1] < 0.2


@pytest.mark.parametrize("version", [2, 3])  # its features file missing, or damaged
def test_without_its_features_a_version_abstains_by_its_top_score(nearest, version):
    r = nearest.post("/predict", params={"version": version}, files={"file": ("d.png", DARK)})
    assert r.status_code == 200, r.text
    answer = r.json()["predictions"][0]
    assert answer["similarity"] is None
    assert answer["unknown"] is True  # 0.9 is under its top-score threshold of 0.95
