"""POST /finetune checks the upload before queueing; job processes are off here."""

import io
import zipfile

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.helpers import image_bytes, make_dataset, pattern_image, zip_directory

PNG = image_bytes(pattern_image("checks", 32), "PNG")


@pytest.fixture
def jobs_client(registry, settings_for):
    with TestClient(create_app(settings_for(run_jobs=False, max_archive_bytes=3_000_000))) as c:
        yield c


def _upload(client, data: bytes, name="data.zip", **fields):
    return client.post(
        "/finetune", files={"dataset": (name, data)}, data={k: str(v) for k, v in fields.items()}
    )


def _good_zip(tmp_path, **kw) -> bytes:
    return zip_directory(make_dataset(tmp_path / "ds", per_class=6, size=24, **kw))


def test_good_upload_is_queued_with_location_and_summary(jobs_client, tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=6, size=24)
    (root / "hstripes" / "readme.txt").write_text("notes")
    (root / "vstripes" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    r = _upload(jobs_client, zip_directory(root, prefix="photos/"), epochs=2, image_size=32)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["status"] == "queued" and r.headers["location"] == f"/finetune/{job_id}"
    job = jobs_client.get(f"/finetune/{job_id}").json()
    assert job["model"] == "toy" and job["params"]["epochs"] == 2 and job["promote"] is True
    assert job["dataset"]["counts"] == {"hstripes": 6, "vstripes": 6}
    assert {s["path"] for s in job["skipped"]} == {"hstripes/readme.txt", "vstripes/broken.jpg"}
    assert jobs_client.get("/finetune").json()["jobs"][0]["job_id"] == job_id


def test_jobs_list_newest_first_and_cancel_queued(jobs_client, tmp_path):
    data = _good_zip(tmp_path)
    first = _upload(jobs_client, data).json()["job_id"]
    second = _upload(jobs_client, data).json()["job_id"]
    assert [j["job_id"] for j in jobs_client.get("/finetune").json()["jobs"]] == [second, first]
    r = jobs_client.delete(f"/finetune/{first}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = jobs_client.delete(f"/finetune/{first}")
    assert (again.status_code, again.json()["code"]) == (409, "job_finished")
    assert jobs_client.get("/finetune/nope").json()["code"] == "job_not_found"
    assert jobs_client.delete("/finetune/nope").status_code == 404


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


BAD_ARCHIVES = {
    "not-an-archive": (b"hello, I am text", 400, "invalid_archive"),
    "traversal": (_zip_bytes({"../a/x.png": PNG, "b/y.png": PNG}), 400, "unsafe_archive"),
    "absolute": (_zip_bytes({"/tmp/a/x.png": PNG}), 400, "unsafe_archive"),
    "zip-bomb": (_zip_bytes({"a/z.png": b"\0" * 4_000_000}), 413, "archive_too_large"),
    "one-class": (_zip_bytes({f"a/{i}.png": PNG for i in range(6)}), 400, "too_few_classes"),
    "few-images": (
        _zip_bytes({**{f"a/{i}.png": PNG for i in range(6)}, "b/0.png": PNG}),
        400,
        "too_few_images",
    ),
    "no-classes": (_zip_bytes({"x.png": PNG}), 400, "no_classes"),
    "only-junk-in-a-class": (
        _zip_bytes({**{f"a/{i}.png": PNG for i in range(6)}, "b/notes.txt": b"x"}),
        400,
        "empty_class",
    ),
}


@pytest.mark.parametrize("case", BAD_ARCHIVES)
def test_bad_archives_get_clear_errors_and_leave_nothing(jobs_client, settings_for, case):
    data, status, code = BAD_ARCHIVES[case]
    r = _upload(jobs_client, data)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.json()["detail"]
    jobs_dir = settings_for().data_dir / "jobs"
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir())
    assert jobs_client.get("/finetune").json()["jobs"] == []
    assert jobs_client.post("/predict", files={"file": ("a.png", PNG)}).status_code == 200


def test_junk_unicode_and_spaces_are_fine(jobs_client, tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=6, size=24, names=("chat noir", "café ☕"))
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._junk").write_bytes(b"x")
    (root / "chat noir" / ".DS_Store").write_bytes(b"x")
    r = _upload(jobs_client, zip_directory(root))
    assert r.status_code == 202, r.text
    job = jobs_client.get(r.headers["location"]).json()
    assert sorted(job["dataset"]["class_names"]) == ["café ☕", "chat noir"]
    assert job["skipped"] == []


def test_tar_gz_upload_is_accepted(jobs_client, tmp_path):
    import tarfile

    root = make_dataset(tmp_path / "ds", per_class=6, size=24)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(root, arcname="data")
    assert _upload(jobs_client, buf.getvalue(), name="d.tar.gz").status_code == 202


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": "many"}, "epochs"),
        ({"image_size": 5000}, "image_size"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"fine_tune_at": 500}, "fine_tune_at"),
        ({"base": "vgg19"}, "base"),
        ({"model": "../x"}, "model"),
        ({"model": "a b"}, "model"),
        ({"validation_split": 0.99}, "validation_split"),
        ({"fine_tune_at": "deep"}, "fine_tune_at"),
        ({"fine_tune_at": -1}, "fine_tune_at"),
        ({"flip": "diagonal"}, "flip"),
        ({"rotation": 2}, "rotation"),
        ({"zoom": -0.1}, "zoom"),
        ({"class_weight": "heavy"}, "class_weight"),
        ({"lr_schedule": "cosine"}, "lr_schedule"),
        ({"max_minutes": -5}, "max_minutes"),
        ({"early_stopping_patience": "soon"}, "early_stopping_patience"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(jobs_client, tmp_path, fields, field):
    r = _upload(jobs_client, _good_zip(tmp_path), **fields)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_parameters")
    assert field in r.json()["detail"]


def test_recipe_fields_are_kept_with_the_job(jobs_client, tmp_path):
    fields = {
        "fine_tune_at": "auto",
        "flip": "horizontal_and_vertical",
        "rotation": 0.1,
        "contrast": 0,
        "class_weight": "balanced",
        "max_minutes": 3,
        "early_stopping_patience": 2,
        "lr_schedule": "decay",
    }
    r = _upload(jobs_client, _good_zip(tmp_path), **fields)
    assert r.status_code == 202, r.text
    params = jobs_client.get(r.headers["location"]).json()["params"]
    assert {k: params[k] for k in fields} == fields
    layer = _upload(jobs_client, _good_zip(tmp_path / "again"), fine_tune_at="100")
    assert jobs_client.get(layer.headers["location"]).json()["params"]["fine_tune_at"] == 100


def test_missing_dataset_is_422(jobs_client):
    r = jobs_client.post("/finetune", data={"epochs": "1"})
    assert r.status_code == 422 and "dataset" in r.json()["detail"]


def test_queue_bound_and_upload_cap(registry, settings_for, tmp_path):
    settings = settings_for(run_jobs=False, max_queued_jobs=2, max_upload_bytes=200_000)
    data = _good_zip(tmp_path)
    with TestClient(create_app(settings)) as c:
        big = _upload(c, b"PK\x03\x04" + b"\0" * 300_000)
        assert (big.status_code, big.json()["code"]) == (413, "upload_too_large")
        assert _upload(c, data).status_code == 202
        assert _upload(c, data).status_code == 202
        full = _upload(c, data)
        assert (full.status_code, full.json()["code"]) == (503, "queue_full")
        assert full.headers["retry-after"]


def test_finetune_needs_the_admin_key(registry, settings_for, tmp_path):
    with TestClient(create_app(settings_for(run_jobs=False, api_key="k"))) as c:
        assert _upload(c, _good_zip(tmp_path)).status_code == 401
        ok = c.post(
            "/finetune",
            files={"dataset": ("d.zip", _good_zip(tmp_path / "2"))},
            headers={"Authorization": "Bearer k"},
        )
        assert ok.status_code == 202
        assert c.delete(ok.headers["location"]).status_code == 401
        assert c.get(ok.headers["location"]).status_code == 401  # reads need a key too
        key = {"Authorization": "Bearer k"}
        assert c.get(ok.headers["location"], headers=key).status_code == 200


def test_oversized_body_is_refused_from_its_content_length(registry, settings_for):
    with TestClient(create_app(settings_for(run_jobs=False, max_upload_bytes=1000))) as c:
        r = _upload(c, b"PK\x03\x04" + b"\0" * 3_000_000)
    assert (r.status_code, r.json()["code"]) == (413, "upload_too_large")
