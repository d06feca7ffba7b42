"""Capture and review through the API, with real requests: the capture rules (threshold,
sampling, caps, expiry), capture off the request path (and a full disk under it), every
review action producing the right dataset version, retraining from what was reviewed,
and a deleted model taking its captures with it. (The fake model answers each image with
a score of 0.9: a dark image is a "circle", a bright one a "square".)"""

from __future__ import annotations

import statistics
import subprocess
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from tests.fakes import write_fake_version
from tests.helpers import image_bytes, make_dataset, mount_tmpfs, zip_directory

PARAMS = {"base": "mobilenet_v2", "epochs": 3, "learning_rate": 0.002, "image_size": 96}


@pytest.fixture
def api(tmp_path, fake_models, settings_for):
    """The fake "toy" model, trained on version 1 of stored dataset "shapes"."""
    from app.storage.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models")
    dataset = {"name": "shapes", "version": 1, "validation": []}
    write_fake_version(registry, "toy", ["circle", "square"], dataset=dataset, params=PARAMS)
    registry.set_active("toy", 1)
    write_fake_version(registry, "other", ["a", "b"])
    registry.set_active("other", 1)
    settings = settings_for(run_jobs=False, served_models=["toy", "other"])
    with TestClient(create_app(settings)) as client:
        archive = zip_directory(make_dataset(tmp_path / "shapes", per_class=6, size=24))
        r = client.post("/datasets", data={"name": "shapes"}, files={"archive": ("d.zip", archive)})
        assert r.status_code == 201, r.text
        yield client


def photo(brightness: int, seed: int = 0) -> bytes:
    img = Image.new("RGB", (24, 24), (brightness, brightness, brightness))
    img.putpixel((seed % 24, seed // 24 % 24), (255 - brightness, 0, 0))  # unique bytes
    return image_bytes(img)


def predict(api, n: int = 1, model: str = "toy", start: int = 0) -> None:
    files = [("file", (f"shot-{start + i}.png", photo(20, start + i))) for i in range(n)]
    r = api.post("/predict", params={"model": model}, files=files)
    assert r.status_code == 200, r.text


def queue(api, **params) -> dict:
    r = api.get("/review", params={"model": "toy", **params})
    assert r.status_code == 200, r.text
    return r.json()


def capture(api, **rule) -> dict:
    r = api.put("/models/toy/capture", json=rule)
    assert r.status_code == 200, r.text
    return r.json()


def wait_written(api) -> None:
    """Wait until the capture writer has written or dropped what was offered (requests
    never wait for it)."""
    assert api.app.state.capture.wait_idle(10)


def test_threshold_keeps_only_uncertain_predictions(api) -> None:
    assert api.get("/models/toy/capture").json()["enabled"] is False
    capture(api, below_score=0.5)  # the fake model answers 0.9: nothing is uncertain
    predict(api, 3)
    wait_written(api)
    assert queue(api)["total"] == 0
    shown = capture(api, below_score=0.95, max_per_hour=50)
    assert shown["settings"]["below_score"] == 0.95 and shown["settings"]["sample_rate"] == 0.0
    predict(api, 3)
    wait_written(api)
    body = queue(api)
    assert body["total"] == 3 and body["classes"] == ["circle", "square"]
    assert body["dataset"] == "shapes"
    item = body["items"][0]
    assert item["model"] == "toy" and item["version"] == 1 and item["reason"] == "below_score"
    assert item["label"] == "circle" and item["top"][0] == {"label": "circle", "score": 0.9}
    assert item["filename"].startswith("shot-") and "key" not in str(item).lower()
    image = api.get(item["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert api.get("/models/toy/capture").json()["images"] == 3


def test_sampling_rate_and_off(api) -> None:
    capture(api, below_score=None, sample_rate=1.0)
    predict(api, 2)
    wait_written(api)
    assert queue(api)["total"] == 2 and queue(api)["items"][0]["reason"] == "sampled"
    capture(api, below_score=None, sample_rate=0.0)
    predict(api, 2, start=10)
    wait_written(api)
    assert queue(api)["total"] == 2
    assert api.delete("/models/toy/capture").json()["enabled"] is False
    capture_off = api.get("/models/toy/capture").json()
    assert capture_off["images"] == 2  # turning capture off keeps the queue


def test_caps_per_hour_and_in_total_are_counted(api) -> None:
    capture(api, below_score=0.95, max_per_hour=2)
    predict(api, 5)
    wait_written(api)
    assert queue(api)["total"] == 2
    capture(api, below_score=0.95, max_per_hour=100, max_images=3)
    predict(api, 5, start=20)
    wait_written(api)
    assert queue(api)["total"] == 3
    metrics = api.get("/metrics").text
    assert 'convserve_captures_total{model="toy",outcome="max_per_hour"} 3.0' in metrics
    assert 'convserve_captures_total{model="toy",outcome="max_images"} 4.0' in metrics
    assert 'convserve_captures_total{model="toy",outcome="kept"} 3.0' in metrics


def test_expired_captures_leave_the_queue(api) -> None:
    capture(api, below_score=0.95, expire_after_days=1 / 86400)  # one second
    predict(api, 2)
    wait_written(api)
    assert queue(api)["total"] == 2
    time.sleep(1.2)
    assert queue(api)["total"] == 0
    store = api.app.state.capture.store
    assert store.expire() == 2  # the writer's housekeeping does this every minute
    assert store.objects.keys("toy/") == []


def test_bad_rules_and_unknown_models_are_refused(api) -> None:
    for rule in ({"below_score": 2}, {"sample_rate": -0.1}, {"max_per_hour": 0}, {"x": 1}):
        r = api.put("/models/toy/capture", json=rule)
        assert r.status_code == 422, rule
    r = api.put("/models/nope/capture", json={})
    assert (r.status_code, r.json()["code"]) == (404, "model_not_found")
    assert api.get("/review/0123").status_code == 404
    assert api.post("/review/0123", json={"action": "discard"}).json()["code"] == (
        "capture_not_found"
    )


def test_capture_is_off_the_request_path(api) -> None:
    """A prediction with capture on costs about what one without does: the writer thread
    takes the image (loose bound here; bench/capture.py measures it)."""

    def timings(start: int) -> list[float]:
        out = []
        for i in range(30):
            began = time.perf_counter()
            predict(api, 1, start=start + i)
            out.append(time.perf_counter() - began)
        return out

    timings(500)  # warm
    without = statistics.median(timings(1000))
    capture(api, below_score=0.95, max_per_hour=1000)
    with_capture = statistics.median(timings(2000))
    wait_written(api)
    assert queue(api)["total"] == 30
    assert with_capture < without + 0.02, (without, with_capture)


def test_a_full_disk_drops_the_capture_and_answers_the_prediction(api, tmp_path) -> None:
    folder = tmp_path / "models" / ".captures"
    mount_tmpfs(folder, 64 * 1024)
    try:
        capture(api, below_score=0.95, max_per_hour=1000)
        big = Image.effect_noise((400, 400), 100).convert("RGB")  # ~480 kB as PNG
        for i in range(3):
            r = api.post(
                "/predict",
                params={"model": "toy"},
                files={"file": (f"big-{i}.png", image_bytes(big.rotate(i)))},
            )
            assert r.status_code == 200
        wait_written(api)
        assert queue(api)["total"] == 0
        metrics = api.get("/metrics").text
        assert 'convserve_captures_total{model="toy",outcome="storage"} 3.0' in metrics
        predict(api, 1)  # a small one still fits, and is kept
        wait_written(api)
        assert queue(api)["total"] == 1
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_review_actions_make_the_right_dataset_versions(api) -> None:
    capture(api, below_score=0.95, max_per_hour=100)
    predict(api, 4)
    wait_written(api)
    ids = [i["id"] for i in queue(api, order="least_confident")["items"]]
    before = api.get("/datasets/shapes").json()
    assert before["latest_version"] == 1

    confirm = api.post(f"/review/{ids[0]}", json={"action": "accept"}).json()
    assert (confirm["label"], confirm["dataset"], confirm["version"]) == ("circle", "shapes", 2)
    relabel = api.post(f"/review/{ids[1]}", json={"action": "accept", "label": "hstripes"})
    assert relabel.json()["version"] == 3 and relabel.json()["new_class"] is False
    new = api.post(f"/review/{ids[2]}", json={"action": "accept", "label": "triangle"}).json()
    assert new["new_class"] is True and new["version"] == 4
    gone = api.post(f"/review/{ids[3]}", json={"action": "discard"})
    assert gone.json()["action"] == "discard"

    after = api.get("/datasets/shapes").json()
    assert after["latest_version"] == 4
    assert after["classes"] == {"circle": 1, "hstripes": 7, "triangle": 1, "vstripes": 6}
    version = api.get("/datasets/shapes/versions/2").json()
    assert version["diff"]["added"][0]["label"] == "circle"
    page = api.get("/datasets/shapes/images", params={"label": "triangle"}).json()
    image = page["items"][0]
    assert image["source"] == "prediction"
    assert image["origin"]["model"] == "toy" and image["origin"]["predicted"] == "circle"
    assert queue(api)["total"] == 0
    assert api.get(f"/review/{ids[0]}").status_code == 404


def test_accept_without_a_dataset_says_what_to_do(api) -> None:
    r = api.put("/models/other/capture", json={"below_score": 0.95})
    assert r.status_code == 200
    predict(api, 1, model="other")
    wait_written(api)
    item = api.get("/review", params={"model": "other"}).json()["items"][0]
    r = api.post(f"/review/{item['id']}", json={"action": "accept"})
    assert (r.status_code, r.json()["code"]) == (409, "no_dataset")
    r = api.post(f"/review/{item['id']}", json={"action": "accept", "dataset": "fresh"})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert api.get("/datasets/fresh").json()["classes"] == {"a": 1}


def test_export_has_every_kept_image_and_its_answer(api) -> None:
    import io
    import json
    import zipfile

    capture(api, below_score=0.95)
    predict(api, 2)
    wait_written(api)
    r = api.get("/review/export", params={"model": "toy"})
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        index = json.loads(zf.read("captures.json"))
        assert len(index) == 2 and all(zf.read(i["path"]) for i in index)
        assert all(i["path"].startswith("circle/") for i in index)


def test_retrain_queues_a_job_with_the_same_parameters_on_the_latest_version(api) -> None:
    capture(api, below_score=0.95)
    predict(api, 1)
    wait_written(api)
    item = queue(api)["items"][0]
    api.post(f"/review/{item['id']}", json={"action": "accept", "label": "vstripes"})
    r = api.post("/models/toy/retrain")
    assert r.status_code == 202, r.text
    job = api.get(r.headers["location"]).json()
    assert job["dataset"]["name"] == "shapes" and job["dataset"]["version"] == 2
    for key, value in PARAMS.items():
        assert job["params"][key] == value
    r = api.post("/models/other/retrain")
    assert (r.status_code, r.json()["code"]) == (409, "no_dataset")


def test_the_bytes_kept_are_capped_and_one_image_can_be_deleted(
    tmp_path, fake_models, settings_for
) -> None:
    """``CONVSERVE_MAX_CAPTURE_BYTES`` holds what all models keep; a reviewer can delete
    one kept image, its file with it."""
    from app.storage.registry import ModelRegistry

    sizes = [len(photo(20, i)) for i in range(3)]
    assert max(sizes) < 1.2 * min(sizes)  # the cap below fits two, never three
    registry = ModelRegistry(tmp_path / "models")
    write_fake_version(registry, "toy", ["circle", "square"])
    registry.set_active("toy", 1)
    settings = settings_for(run_jobs=False, max_capture_bytes=2 * max(sizes) + min(sizes) // 2)
    with TestClient(create_app(settings)) as api:
        capture(api, below_score=0.95, max_per_hour=100)
        predict(api, 3)
        wait_written(api)
        items = queue(api)["items"]
        assert len(items) == 2
        metrics = api.get("/metrics").text
        assert 'convserve_captures_total{model="toy",outcome="max_bytes"} 1.0' in metrics
        store = api.app.state.capture.store
        assert len(store.objects.keys("toy/")) == 2

        assert api.delete(f"/review/{items[0]['id']}").status_code == 204
        assert [i["id"] for i in queue(api)["items"]] == [items[1]["id"]]
        assert api.get(f"/review/{items[0]['id']}").status_code == 404
        assert api.get(items[0]["image_url"]).status_code == 404
        assert len(store.objects.keys("toy/")) == 1
        r = api.delete(f"/review/{items[0]['id']}")
        assert (r.status_code, r.json()["code"]) == (404, "capture_not_found")


def test_deleting_a_model_deletes_its_captures_and_all_at_once(api, tmp_path) -> None:
    for model in ("toy", "other"):
        assert api.put(f"/models/{model}/capture", json={"below_score": 0.95}).status_code == 200
        predict(api, 2, model=model)
    wait_written(api)
    assert api.delete("/review", params={"model": "toy"}).json() == {"deleted": 2}
    assert queue(api)["total"] == 0
    assert api.delete("/models/other").status_code == 204
    assert api.get("/review", params={"model": "other"}).json()["total"] == 0
    assert not list((tmp_path / "models" / ".captures").rglob("*/*"))
