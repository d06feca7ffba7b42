"""Training from a stored dataset, end to end, against the real service."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.helpers import image_bytes, make_dataset, pattern_image, zip_directory
from tests.jobs.service import Service, wait_for

FAST = {
    "epochs": "1",
    "fine_tune_epochs": "0",
    "image_size": "32",
    "batch_size": "8",
    "early_stopping_patience": "0",
    "refit": "off",  # these test the datasets around training
}


@pytest.fixture
def service(tmp_path, registry):
    svc = Service(tmp_path).start()
    yield svc
    svc.stop()


def _train(client, **fields) -> dict:
    r = client.post("/finetune", data={**FAST, "model": "shapes", **fields})
    assert r.status_code == 202, r.text
    job = wait_for(client, r.json()["job_id"], lambda j: j["status"] in ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    return job


@pytest.mark.slow  # 60 s: a service start and two short trainings
def test_upload_once_grow_relabel_retrain_and_trace_each_version(service, tmp_path):
    root = make_dataset(tmp_path / "photos", per_class=10, size=32)
    archive = zip_directory(root)
    with service.client() as c:
        r = c.post("/datasets", data={"name": "shapes"}, files={"archive": ("d.zip", archive)})
        assert r.status_code == 201, r.text
        first = _train(c, dataset_name="shapes")
        assert first["dataset"]["version"] == 1

        more = [
            ("file", (f"h{i}.png", image_bytes(pattern_image("hstripes", 32, 50 + i))))
            for i in range(4)
        ]
        assert (
            c.post("/datasets/shapes/images", params={"label": "hstripes"}, files=more).json()[
                "version"
            ]
            == 2
        )
        moved = c.get("/datasets/shapes/images", params={"label": "vstripes"}).json()["items"][0]
        r = c.patch(f"/datasets/shapes/images/{moved['id']}", json={"label": "hstripes"})
        assert r.json()["version"] == 3

        # No upload: the job reads the latest version from the store.
        second = _train(c, dataset_name="shapes")
        assert second["dataset"]["version"] == 3

        details = {v["version"]: v for v in c.get("/models/shapes").json()["version_details"]}
        one, two = details[first["result"]["version"]], details[second["result"]["version"]]
        assert (one["dataset"]["name"], one["dataset"]["version"]) == ("shapes", 1)
        assert one["dataset"]["per_class"] == {"hstripes": 10, "vstripes": 10}
        assert (two["dataset"]["name"], two["dataset"]["version"]) == ("shapes", 3)
        assert two["dataset"]["per_class"] == {"hstripes": 15, "vstripes": 9}
        # Which images were validation: ids of the version it trained on.
        stored = c.get("/datasets/shapes/images", params={"version": 3, "limit": 500}).json()
        ids = {item["id"] for item in stored["items"]}
        assert two["dataset"]["validation"] and set(two["dataset"]["validation"]) <= ids

        # The command answers "what trained version 2?" too.
        from tests.client.test_command import convserve

        listed = convserve(service, "models", "shapes")
        rows = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
        assert rows[str(second["result"]["version"])][-1] == "shapes:3 (24 images)"
        assert rows[str(first["result"]["version"])][-1] == "shapes:1 (20 images)"

        exported = c.get("/datasets/shapes/versions/1/export")
        with zipfile.ZipFile(io.BytesIO(exported.content)) as zf:
            files = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
        assert files == {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.*")}
