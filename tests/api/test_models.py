import re
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.helpers import image_bytes, pattern_image, write_toy_version

PNG = image_bytes(pattern_image("checks", 32), "PNG")


def test_list_and_detail(client, registry):
    r = client.get("/models")
    assert r.status_code == 200
    (toy,) = r.json()["models"]
    assert toy["name"] == "toy" and toy["status"] == "ready"
    assert toy["active_version"] == 1 and toy["versions"] == [1]
    assert toy["class_names"] == ["circle", "square"] and toy["input_size"] == 32
    assert toy["backend"] == "keras" and toy["metrics"] == {"accuracy": 0.5}
    detail = client.get("/models/toy").json()
    assert detail["version_details"][0]["source"] == "test"
    assert detail["version_details"][0]["created_at"]
    assert client.get("/models/nope").json()["code"] == "model_not_found"


def test_activate_rolls_forward_and_back(client, registry):
    write_toy_version(registry, "toy", ["circle", "square"], seed=3)
    r = client.post("/models/toy/versions/2/activate")
    assert r.status_code == 200 and r.json()["active_version"] == 2
    assert registry.active_version("toy") == 2
    assert client.post("/predict", files={"file": ("a.png", PNG)}).json()["version"] == 2
    assert client.post("/models/toy/versions/1/activate").json()["active_version"] == 1
    assert client.post("/predict", files={"file": ("a.png", PNG)}).json()["version"] == 1


def test_activate_and_delete_errors(client, registry):
    assert client.post("/models/toy/versions/9/activate").json()["code"] == "version_not_found"
    assert client.post("/models/nope/versions/1/activate").status_code == 404
    r = client.delete("/models/toy/versions/1")
    assert (r.status_code, r.json()["code"]) == (409, "version_active")
    assert client.delete("/models/toy/versions/5").status_code == 404
    assert client.post("/models/toy/versions/0/activate").status_code == 422


def test_delete_inactive_version_removes_it(client, registry):
    write_toy_version(registry, "toy", ["circle", "square"], seed=3)
    r = client.delete("/models/toy/versions/2")
    assert r.status_code == 200 and r.json()["versions"] == [1]
    assert not registry.version_dir("toy", 2).exists()


def test_failed_load_keeps_the_old_version_serving(client, registry):
    version = write_toy_version(registry, "toy", ["circle", "square"], seed=3)
    registry.model_path("toy", version).write_bytes(b"corrupt")
    r = client.post(f"/models/toy/versions/{version}/activate")
    assert (r.status_code, r.json()["code"]) == (409, "activation_failed")
    assert "version 1 still serves" in r.json()["detail"]
    assert client.post("/predict", files={"file": ("a.png", PNG)}).json()["version"] == 1
    assert client.get("/models/toy").json()["last_error"]
    assert registry.active_version("toy") == 1


def test_admin_endpoints_need_the_key(registry, settings_for):
    with TestClient(create_app(settings_for(api_key="s3cret"))) as c:
        write_toy_version(registry, "toy", ["circle", "square"], seed=3)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/models/toy/versions/2/activate", headers=headers)
            assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
            assert c.delete("/models/toy/versions/2", headers=headers).status_code == 401
        ok = c.post("/models/toy/versions/2/activate", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        # Predicting stays open; reading needs a key (any scope) once one is set.
        assert c.post("/predict", files={"file": ("a.png", PNG)}).status_code == 200
        assert c.get("/models").status_code == 401
        assert c.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/predict", files={"file": ("a.png", PNG)})
    client.post("/predict", params={"model": "nope"}, files={"file": ("a.png", PNG)})
    text = client.get("/metrics").text
    assert (
        'convserve_predict_requests_total{model="toy",protocol="convserve",'
        'status="200",version="1"} 1.0' in text
    )
    assert (
        'convserve_predict_requests_total{model="unknown",protocol="convserve",status="404",version="none"}'
        in text
    )
    assert "convserve_batch_size_bucket" in text
    assert 'convserve_model_active_version{model="toy"} 1.0' in text
    assert "convserve_queue_depth" in text


def test_model_without_versions_fails_but_others_serve(registry, settings_for):
    with TestClient(create_app(settings_for(served_models=["toy", "signs"]))) as c:
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert models["signs"]["status"] == "failed" and "train one" in models["signs"]["reason"]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "signs" in ready.json()["models"]
        r = c.post("/predict", params={"model": "signs"}, files={"file": ("a.png", PNG)})
        assert (r.status_code, r.json()["code"]) == (503, "model_unavailable")
        assert r.headers["retry-after"]
        assert c.post("/predict", files={"file": ("a.png", PNG)}).status_code == 200


def test_unknown_route_and_method_use_the_error_shape(client):
    r = client.get("/nothing-here")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert client.put("/models").json()["code"] == "method_not_allowed"


@pytest.mark.parametrize("weights", ["/nonexistent/weights.h5"])
def test_bootstrap_without_weights_fails_that_model_only(registry, settings_for, weights):
    settings = settings_for(served_models=["toy", "mobilenet_v2"], pretrained=weights)
    with TestClient(create_app(settings)) as c:
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert models["mobilenet_v2"]["status"] == "failed"
        assert models["mobilenet_v2"]["reason"]
        assert models["toy"]["status"] == "ready"
    assert registry.versions("mobilenet_v2") == []


def test_failed_bootstrap_is_tried_again_until_the_weights_appear(registry, settings_for, tmp_path):
    import keras

    weights = tmp_path / "mobilenet_v2.weights.h5"
    settings = settings_for(
        served_models=["toy", "mobilenet_v2"],
        pretrained=str(weights),
        registry_poll_seconds=0.1,
        bootstrap_retry_seconds=0.2,
    )
    with TestClient(create_app(settings)) as c:
        detail = c.get("/models/mobilenet_v2").json()
        assert detail["status"] == "failed" and "trying again in" in detail["reason"]
        # The weights become available (a download that now works, a mounted cache).
        keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None).save_weights(weights)
        deadline = time.monotonic() + 60
        while c.get("/models/mobilenet_v2").json()["status"] != "ready":
            assert time.monotonic() < deadline, c.get("/models/mobilenet_v2").json()
            time.sleep(0.2)
        r = c.post("/predict", params={"model": "mobilenet_v2"}, files={"file": ("a.png", PNG)})
        assert r.status_code == 200 and r.json()["version"] == 1
    assert registry.versions("mobilenet_v2") == [1]


def test_every_registry_model_is_served_and_new_ones_appear(registry, settings_for):
    write_toy_version(registry, "pets", ["cat", "dog"], seed=1)
    with TestClient(create_app(settings_for(registry_poll_seconds=0.2))) as c:
        assert [m["name"] for m in c.get("/models").json()["models"]] == ["toy", "pets"]
        # Another process (a job, a replica) writes a new model: served without a restart.
        write_toy_version(registry, "birds", ["crow", "owl", "wren"], seed=2)
        # It is listed as "loading" (and answers 503 with Retry-After) until it is ready.
        deadline = time.time() + 20
        status = None
        while time.time() < deadline and status != "ready":
            models = {m["name"]: m for m in c.get("/models").json()["models"]}
            status = models.get("birds", {}).get("status")
            if status == "loading":
                r = c.post("/predict?model=birds", files={"file": ("a.png", PNG)})
                # (It may have become ready between the two requests.)
                assert r.status_code == 200 or r.headers["retry-after"] == "5"
            time.sleep(0.1)
        assert status == "ready"
        r = c.post("/predict?model=birds", files={"file": ("a.png", PNG)})
        assert r.status_code == 200 and r.json()["predictions"][0]["top"][0]["label"] in (
            "crow",
            "owl",
            "wren",
        )


def test_delete_a_whole_model(registry, settings_for):
    write_toy_version(registry, "pets", ["cat", "dog"], seed=1)
    write_toy_version(registry, "pets", ["cat", "dog"], seed=2)
    with TestClient(create_app(settings_for(api_key="k", run_jobs=False))) as c:
        key = {"Authorization": "Bearer k"}
        assert c.delete("/models/pets").status_code == 401
        assert c.delete("/models/nope", headers=key).json()["code"] == "model_not_found"
        r = c.delete("/models/toy", headers=key)
        assert (r.status_code, r.json()["code"]) == (409, "model_is_default")
        assert c.delete("/models/pets", headers=key).status_code == 204
        assert [m["name"] for m in c.get("/models", headers=key).json()["models"]] == ["toy"]
        assert c.post("/predict?model=pets", files={"file": ("a.png", PNG)}).status_code == 404
    assert registry.names() == ["toy"]
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".trash")]


def test_a_model_in_training_cannot_be_deleted(registry, settings_for, tmp_path):
    from tests.helpers import make_dataset, zip_directory

    write_toy_version(registry, "pets", ["cat", "dog"], seed=1)
    data = zip_directory(make_dataset(tmp_path / "ds", per_class=6, size=24))
    with TestClient(create_app(settings_for(run_jobs=False))) as c:
        job = c.post("/finetune", files={"dataset": ("d.zip", data)}, data={"model": "pets"})
        assert job.status_code == 202
        r = c.delete("/models/pets")
        assert (r.status_code, r.json()["code"]) == (409, "model_in_training")
        assert job.json()["job_id"] in r.json()["detail"]
        c.delete(f"/finetune/{job.json()['job_id']}")
        assert c.delete("/models/pets").status_code == 204


def test_no_built_in_model_serves_what_the_registry_holds(registry, settings_for):
    with TestClient(create_app(settings_for(served_models="none", default_model="toy"))) as c:
        assert [m["name"] for m in c.get("/models").json()["models"]] == ["toy"]
        assert c.get("/readyz").status_code == 200


def test_validation_images_of_a_confusion_matrix_cell(registry, client, tmp_path):
    import numpy as np

    from app.storage.registry import MODEL_FILE
    from app.training.evaluate import write_validation_samples

    # Four prepared validation images: circles 0, 1 (one taken for a square), squares 2, 3.
    files = []
    for i in range(4):
        path = tmp_path / "prep" / f"000{i // 2}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(pattern_image("checks", 64, seed=i), "PNG"))
        files.append(str(path))
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    scores = np.array([0.9, 0.6, 0.8, 0.7])
    sources = {"0000/000001.png": "circle/IMG_1.jpg"}
    source = registry.model_path("toy", 1)

    def save(folder):
        (folder / MODEL_FILE).write_bytes(source.read_bytes())
        write_validation_samples(folder, files, y_true, y_pred, scores, sources)

    meta = dict(registry.metadata("toy", 1))
    meta["metrics"] = {"accuracy": 0.75, "confusion_matrix": [[1, 1], [0, 2]]}
    registry.write_version("toy", save, meta)

    r = client.get(
        "/models/toy/versions/2/validation", params={"true": "circle", "predicted": "square"}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["in_cell"] == 1 and body["per_cell"] == 24
    (image,) = body["images"]
    assert (image["true"], image["predicted"], image["source"]) == (
        "circle",
        "square",
        "circle/IMG_1.jpg",
    )
    picture = client.get(image["url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    assert picture.content[:3] == b"\xff\xd8\xff"
    # Its Grad-CAM map, for the class it was predicted as (or another one).
    heat = client.get(image["url"] + "/gradcam")
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    assert heat.headers["x-explained-class"] == "square"
    assert heat.content[:8] == b"\x89PNG\r\n\x1a\n"
    other = client.get(image["url"] + "/gradcam", params={"label": "circle"})
    assert other.headers["x-explained-class"] == "circle"
    missing = client.get("/models/toy/versions/2/validation/x.jpg/gradcam")
    assert (missing.status_code, missing.json()["code"]) == (404, "image_not_found")
    # Squares, least confident first.
    squares = client.get("/models/toy/versions/2/validation?true=square").json()["images"]
    assert [i["score"] for i in squares] == [0.7, 0.8]
    assert len(client.get("/models/toy/versions/2/validation").json()["images"]) == 4

    r = client.get("/models/toy/versions/2/validation?true=cat")
    assert (r.status_code, r.json()["code"]) == (422, "unknown_class")
    r = client.get("/models/toy/versions/1/validation")
    assert (r.status_code, r.json()["code"]) == (404, "no_validation_images")
    for bad in ("..%2F..%2Fmetadata.json", "..%2F1%2Fmodel.keras", "0-0-9.jpg", "x.jpg"):
        r = client.get(f"/models/toy/versions/2/validation/{bad}")
        assert r.status_code == 404, bad


def test_architectures_lists_every_base_training_accepts(client):
    body = client.get("/architectures").json()["architectures"]
    by_name = {a["name"]: a for a in body}
    assert set(by_name) == {
        "lenet5", "alexnet", "vgg16", "googlenet", "resnet50", "mobilenet", "mobilenet_v2",
        "efficientnet_b0",
    }  # fmt: skip
    assert [a["year"] for a in body] == sorted(a["year"] for a in body)
    assert by_name["vgg16"]["parameters"] == 138_357_544
    assert by_name["lenet5"]["from_scratch_only"] and not by_name["lenet5"]["pretrained"]
    assert by_name["lenet5"]["default_image_size"] == 32
    assert by_name["mobilenet_v2"]["fine_tune_at"] == {"last_stage": 116, "upper_half": 54}


def test_a_version_written_in_non_ascii_digits_is_not_found_not_a_server_error(client):
    # "¹5" and "٣" count as digits to str.isdigit(), but are not version numbers; found by
    # the schema fuzzer on the KServe V2 route.
    for version in ("%C2%B95", "%D9%A3"):
        r = client.post(f"/v2/models/toy/versions/{version}/infer", json={"inputs": []})
        assert r.status_code == 404 and r.json()["code"] == "version_not_found", r.text
        r = client.get(f"/v1/models/toy/versions/{version}")
        assert r.status_code == 404, r.text
    r = client.get("/finetune/nope/events", headers={"Last-Event-ID": b"\xb2"})
    assert r.status_code == 404, r.text


def test_the_api_reference_pages_load_their_assets_from_the_service(client):
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets and all(a.startswith("/") for a in assets), assets
        for asset in assets:
            assert client.get(asset).status_code == 200, asset


def test_a_model_with_random_weights_says_so_in_the_api_and_the_console(tmp_path, settings_for):
    from app.storage.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models")
    write_toy_version(registry, "toy", ["circle", "square"], metadata={"trained": False})
    with TestClient(create_app(settings_for())) as c:
        assert c.get("/models/toy").json()["trained"] is False
        listing = c.get("/console/models").text
        assert "random weights: its answers mean nothing" in listing
        assert "random (CONVSERVE_PRETRAINED=none)" in c.get("/console/models/toy").text


def test_a_method_not_allowed_names_every_method_the_path_takes(client):
    r = client.put("/models/toy")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    assert set(r.headers["allow"].split(", ")) >= {"GET", "DELETE"}
    r = client.put("/v1/models/toy:predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = client.put("/datasets/check")  # not taken for /datasets/{name}
    assert r.status_code == 405 and r.headers["allow"] == "POST"
