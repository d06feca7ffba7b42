"""The /datasets routes: every route and its errors, and /finetune from a stored dataset
(job processes are off here; tests/jobs trains from one)."""

from __future__ import annotations

import io
import threading
import zipfile

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.helpers import image_bytes, make_dataset, pattern_image, zip_directory


@pytest.fixture
def api(fake_registry, settings_for):
    settings = settings_for(run_jobs=False, max_dataset_images=40, max_files_per_request=8)
    with TestClient(create_app(settings)) as c:
        yield c


def _png(kind: str = "checks", seed: int = 0) -> bytes:
    return image_bytes(pattern_image(kind, 24, seed=seed))


def _create(api, tmp_path, name="shapes", per_class=6):
    archive = zip_directory(make_dataset(tmp_path / name, per_class=per_class, size=24))
    return api.post("/datasets", data={"name": name}, files={"archive": ("d.zip", archive)})


def test_create_from_an_archive_then_show_list_and_page(api, tmp_path) -> None:
    root = make_dataset(tmp_path / "src", per_class=6, size=24)
    (root / "hstripes" / "notes.txt").write_text("not an image")
    r = api.post(
        "/datasets",
        data={"name": "shapes"},
        files={"archive": ("d.zip", zip_directory(root, prefix="photos/"))},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["version"], body["added"], r.headers["location"]) == (1, 12, "/datasets/shapes")
    assert body["skipped"] == [{"path": "hstripes/notes.txt", "reason": "not an image we can read"}]
    shown = api.get("/datasets/shapes").json()
    assert shown["classes"] == {"hstripes": 6, "vstripes": 6} and shown["latest_version"] == 1
    assert any("6 images" in w for w in shown["warnings"])  # few images per class
    assert [d["name"] for d in api.get("/datasets").json()["datasets"]] == ["shapes"]
    page = api.get("/datasets/shapes/images", params={"label": "vstripes", "limit": 4}).json()
    assert (page["total"], len(page["items"])) == (6, 4)
    item = page["items"][0]
    assert item["label"] == "vstripes" and item["source"] == "upload"
    original = (root / "vstripes" / item["filename"]).read_bytes()
    full = api.get(item["url"])
    assert full.content == original and full.headers["content-type"].startswith("image/")
    thumb = api.get(item["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    rest = api.get("/datasets/shapes/images", params={"label": "vstripes", "offset": 4}).json()
    assert len(rest["items"]) == 2


def test_add_relabel_remove_each_make_a_version_with_what_changed(api, tmp_path) -> None:
    _create(api, tmp_path)
    files = [("file", (f"n{i}.png", _png("dark", i))) for i in range(3)]
    files.append(("file", ("bad.jpg", b"not a jpeg")))
    files.append(("file", ("again.png", _png("dark", 0))))
    r = api.post("/datasets/shapes/images", params={"label": "green"}, files=files)
    assert r.status_code == 201, r.text
    added = r.json()
    assert (added["version"], added["added"], len(added["duplicates"])) == (2, 3, 1)
    assert added["skipped"][0]["path"] == "bad.jpg"
    image = added["added_ids"][0]
    r = api.patch(f"/datasets/shapes/images/{image}", json={"label": "nope"})
    assert (r.status_code, r.json()["code"]) == (422, "class_not_found")
    r = api.patch(f"/datasets/shapes/images/{image}", json={"label": "hstripes"})
    assert r.json()["version"] == 3
    r = api.patch(f"/datasets/shapes/images/{image}", json={"label": "new", "create_class": True})
    assert r.json()["version"] == 4
    assert api.delete(f"/datasets/shapes/images/{image}").json()["version"] == 5
    assert api.post("/datasets/shapes/classes", json={"label": "empty"}).json()["version"] == 6
    v3 = api.get("/datasets/shapes/versions/3").json()
    assert v3["change"]["action"] == "relabel"
    assert v3["diff"]["relabelled"] == [{"id": image, "old": "green", "to": "hstripes"}]
    shown = api.get("/datasets/shapes").json()
    assert shown["classes"] == {"empty": 0, "green": 2, "hstripes": 6, "new": 0, "vstripes": 6}
    assert [v["version"] for v in shown["versions"]] == [1, 2, 3, 4, 5, 6]
    diff = api.get("/datasets/shapes/diff", params={"old": 1, "new": 6}).json()
    assert len(diff["added"]) == 2 and diff["removed"] == []
    assert diff["classes_added"] == ["empty", "green", "new"]


def test_export_gives_back_the_archives_images(api, tmp_path) -> None:
    root = make_dataset(tmp_path / "src", per_class=6, size=24)
    api.post("/datasets", data={"name": "ex"}, files={"archive": ("d.zip", zip_directory(root))})
    r = api.get("/datasets/ex/versions/1/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        exported = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    original = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.*")}
    assert exported == original


def test_the_check_of_a_stored_version(api, tmp_path) -> None:
    _create(api, tmp_path)
    report = api.get("/datasets/shapes/versions/1/check").json()
    assert report["counts"] == {"hstripes": 6, "vstripes": 6} and report["images"] == 12
    api.post("/datasets/shapes/classes", json={"label": "empty"})
    r = api.get("/datasets/shapes/versions/2/check")
    assert (r.status_code, r.json()["code"]) == (400, "empty_class")


def test_errors_have_the_right_status_and_code(api, tmp_path) -> None:
    cases = [
        (api.get("/datasets/none"), 404, "dataset_not_found"),
        (api.post("/datasets", data={"name": "../x"}), 422, "invalid_dataset_name"),
        (api.get("/datasets/none/versions/1"), 404, "dataset_not_found"),
    ]
    _create(api, tmp_path)
    png = _png()
    cases += [
        (_create(api, tmp_path), 409, "dataset_exists"),
        (api.get("/datasets/shapes/versions/9"), 404, "dataset_version_not_found"),
        (api.get("/datasets/shapes/images/" + "0" * 64), 404, "image_not_found"),
        (api.get("/datasets/shapes/images/nothex"), 404, "image_not_found"),
        (api.delete("/datasets/shapes/images/" + "0" * 64), 404, "image_not_found"),
        (api.get("/datasets/shapes/images", params={"label": "x"}), 404, "class_not_found"),
        (
            api.post("/datasets/shapes/images", params={"label": "a/b"}, files={"file": png}),
            422,
            "invalid_label",
        ),
        (
            api.post("/datasets/shapes/images", params={"label": "c"}, files={"file": b"x"}),
            400,
            "no_usable_images",
        ),
        (
            api.post(
                "/datasets/shapes/images",
                params={"label": "c"},
                files=[("file", (f"{i}.png", _png(seed=i))) for i in range(9)],
            ),
            413,
            "too_many_files",
        ),
        (api.post("/datasets/shapes/classes", json={"label": "vstripes"}), 409, "class_exists"),
        (api.delete("/datasets/shapes/versions/1"), 409, "version_latest"),
        (api.post("/datasets", data={"name": "z"}, files={"archive": b"nope"}), 400, None),
        (api.post("/datasets/shapes/images", params={"label": "c"}), 422, "invalid_parameters"),
    ]
    for r, status, code in cases:
        assert r.status_code == status, (r.request.url, r.text)
        if code:
            assert r.json()["code"] == code, r.text
    # Past the image cap (40): 413, and nothing of that request stored.
    answers = []
    for batch in range(4):
        many = [("file", (f"{i}.png", _png("dark", 10 * batch + i))) for i in range(8)]
        answers.append(api.post("/datasets/shapes/images", params={"label": "more"}, files=many))
    assert [r.status_code for r in answers] == [201, 201, 201, 413]
    assert answers[-1].json()["code"] == "dataset_too_large"
    assert api.get("/datasets/shapes").json()["images"] == 12 + 24


def test_admin_key_guards_every_change(fake_registry, settings_for, tmp_path) -> None:
    with TestClient(create_app(settings_for(run_jobs=False, api_key="k"))) as api:
        r = api.post("/datasets", data={"name": "d"})
        assert r.status_code == 401
        ok = api.post("/datasets", data={"name": "d"}, headers={"Authorization": "Bearer k"})
        assert ok.status_code == 201
        assert api.get("/datasets/d").status_code == 401  # reading needs a key too
        assert api.get("/datasets/d", headers={"Authorization": "Bearer k"}).status_code == 200
        assert api.delete("/datasets/d").status_code == 401


def test_two_adds_at_once_through_the_api_both_land(api, tmp_path) -> None:
    api.post("/datasets", data={"name": "race"})
    answers = []

    def add(label: str, kind: str) -> None:
        files = [("file", (f"{i}.png", _png(kind, i))) for i in range(5)]
        answers.append(api.post("/datasets/race/images", params={"label": label}, files=files))

    threads = [threading.Thread(target=add, args=a) for a in (("a", "dark"), ("b", "checks"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.json()["version"] for r in answers) == [2, 3]
    assert api.get("/datasets/race").json()["classes"] == {"a": 5, "b": 5}


def test_finetune_from_a_stored_dataset_and_from_an_upload_kept_as_one(api, tmp_path) -> None:
    _create(api, tmp_path)
    r = api.post("/finetune", data={"dataset_name": "shapes", "model": "fresh"})
    assert r.status_code == 202, r.text
    job = api.get(f"/finetune/{r.json()['job_id']}").json()
    assert (job["dataset"]["name"], job["dataset"]["version"]) == ("shapes", 1)
    assert job["dataset"]["counts"] == {"hstripes": 6, "vstripes": 6}
    # A dataset can't be deleted while a job reads it.
    r = api.delete("/datasets/shapes")
    assert (r.status_code, r.json()["code"]) == (409, "dataset_in_use")
    # An upload with a dataset name becomes that dataset's next version (1 of a new one).
    archive = zip_directory(make_dataset(tmp_path / "up", per_class=6, size=24))
    r = api.post(
        "/finetune",
        data={"dataset_name": "kept", "model": "fresh"},
        files={"dataset": ("d.zip", archive)},
    )
    assert r.status_code == 202, r.text
    assert api.get("/datasets/kept").json()["latest_version"] == 1
    for data, files, field in [
        ({}, None, "dataset"),
        ({"dataset_version": "1"}, None, "dataset_version"),
        ({"dataset_name": "kept", "dataset_version": "1"}, {"dataset": archive}, "dataset_version"),
        ({"dataset_name": "../bad"}, None, "dataset_name"),
    ]:
        r = api.post("/finetune", data=data, files=files)
        assert r.status_code == 422, r.text
        assert field in r.json()["detail"]
    r = api.post("/finetune", data={"dataset_name": "kept", "dataset_version": "7"})
    assert (r.status_code, r.json()["code"]) == (404, "dataset_version_not_found")
    api.post("/datasets", data={"name": "tiny"})
    api.post("/datasets/tiny/images", params={"label": "a"}, files={"file": _png()})
    r = api.post("/finetune", data={"dataset_name": "tiny"})
    assert (r.status_code, r.json()["code"]) == (400, "too_few_classes")
