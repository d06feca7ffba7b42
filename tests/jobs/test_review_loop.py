"""The learning loop end to end through the API, against the real service: train on a
stored dataset, capture predictions, review them into the dataset, retrain with the same
parameters, compare the two versions on the same images, and read the label health."""

from __future__ import annotations

import time

import pytest

from tests.helpers import image_bytes, make_dataset, pattern_image, zip_directory
from tests.jobs.service import Service, wait_for

FIELDS = {
    "base": "lenet5",
    "epochs": "3",
    "image_size": "32",
    "batch_size": "8",
    "refit": "off",  # the loop around training is what these test
}


@pytest.fixture
def service(tmp_path, registry):
    svc = Service(tmp_path, CONVSERVE_LABEL_HEALTH="1").start()
    yield svc
    svc.stop()


def _finished(c, r) -> dict:
    assert r.status_code == 202, r.text
    job = wait_for(c, r.json()["job_id"], lambda j: j["status"] in ("succeeded", "failed"), 180)
    assert job["status"] == "succeeded", job
    return job


@pytest.mark.slow  # 40 s: a service start and two short trainings
def test_capture_review_retrain_compare_and_label_health(service, tmp_path):
    folder = make_dataset(tmp_path / "photos", classes=("checks", "hstripes"), per_class=12)
    with service.client() as c:
        r = c.post(
            "/datasets",
            data={"name": "shapes"},
            files={"archive": ("d.zip", zip_directory(folder))},
        )
        assert r.status_code == 201, r.text
        first = _finished(
            c, c.post("/finetune", data={**FIELDS, "dataset_name": "shapes", "model": "net"})
        )
        assert first["result"]["version"] == 1

        # The training job wrote the dataset version's label health.
        health = c.get("/datasets/shapes/versions/1/health").json()
        assert health["images"] == 24 and health["model"] == {"name": "net", "version": 1}
        assert health["dataset"] == {"name": "shapes", "version": 1}
        assert "out-of-fold" in health["method"]["predictions"]

        # Keep every prediction (a sampling rate of 1), then send six.
        r = c.put("/models/net/capture", json={"below_score": None, "sample_rate": 1.0})
        assert r.status_code == 200 and r.json()["enabled"]
        photos = [
            ("file", (f"new-{kind}-{i}.png", image_bytes(pattern_image(kind, 32, seed=300 + i))))
            for kind in ("checks", "hstripes")
            for i in range(3)
        ]
        assert c.post("/predict", params={"model": "net"}, files=photos).status_code == 200
        deadline = time.time() + 20
        while (queue := c.get("/review", params={"model": "net", "order": "class"}).json())[
            "total"
        ] < 6:
            assert time.time() < deadline, queue
            time.sleep(0.2)
        assert queue["dataset"] == "shapes"

        # Accept each under its true class (the file name says it), discard one.
        items = sorted(queue["items"], key=lambda i: i["filename"])
        discarded = items.pop()
        assert c.post(f"/review/{discarded['id']}", json={"action": "discard"}).status_code == 200
        versions = []
        for item in items:
            label = item["filename"].split("-")[1]
            r = c.post(f"/review/{item['id']}", json={"action": "accept", "label": label})
            assert r.status_code == 200, r.text
            versions.append(r.json()["version"])
        assert versions == [2, 3, 4, 5, 6]
        dataset = c.get("/datasets/shapes").json()
        assert dataset["classes"] == {"checks": 15, "hstripes": 14}
        assert c.get("/review", params={"model": "net"}).json()["total"] == 0

        # Retrain: the same parameters, the latest dataset version, promoted.
        second = _finished(c, c.post("/models/net/retrain", json={}))
        assert second["dataset"]["version"] == 6 and second["result"]["version"] == 2
        for key in ("base", "epochs", "image_size", "batch_size"):
            assert str(second["params"][key]) == FIELDS[key]
        assert c.get("/models/net").json()["active_version"] == 2

        # Both versions on the same images: version 2's validation images that version 1
        # did not train on.
        compared = c.get("/models/net/compare", params={"a": 1, "b": 2}).json()
        assert compared["images"] > 0 and "did not train on" in compared["basis"]
        assert set(compared["versions"]) == {"1", "2"}
        for result in compared["versions"].values():
            assert sum(e["images"] for e in result["per_class"].values()) == compared["images"]

        # The new dataset version's report, from the retraining job.
        health = c.get("/datasets/shapes/versions/6/health").json()
        assert health["images"] == 29 and health["model"]["version"] == 2


@pytest.mark.slow  # 30 s: a service start and two short trainings
def test_a_job_can_start_a_canary_rollout_instead_of_promoting(service, tmp_path):
    folder = make_dataset(tmp_path / "photos", classes=("checks", "hstripes"), per_class=10)
    with service.client() as c:
        r = c.post(
            "/datasets", data={"name": "c"}, files={"archive": ("d.zip", zip_directory(folder))}
        )
        assert r.status_code == 201, r.text
        _finished(c, c.post("/finetune", data={**FIELDS, "dataset_name": "c", "model": "net"}))
        fields = {
            **FIELDS,
            "dataset_name": "c",
            "model": "net",
            "promote": "canary",
            "rollout_share": "0.5",
        }
        job = _finished(c, c.post("/finetune", data=fields))
        assert job["rollout"] == {"mode": "canary", "share": 0.5}
        assert job["result"]["promoted"] is False and job["result"]["rollout"]["mode"] == "canary"
        assert c.get("/models/net").json()["active_version"] == 1
        shown = c.get("/models/net/rollout").json()
        assert (shown["status"], shown["version"], shown["baseline"]) == ("running", 2, 1)
        photo = image_bytes(pattern_image("checks", 32, seed=9))
        served = {
            c.post("/predict", params={"model": "net"}, files={"file": ("p.png", photo)}).json()[
                "version"
            ]
            for _ in range(30)
        }
        assert served == {1, 2}  # each answer by either, half and half (all alike: 2 in 10^9)
        r = c.post("/finetune", data={**fields, "promote": "true"})
        assert r.status_code == 422  # rollout_share goes with canary or shadow only
