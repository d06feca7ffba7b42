"""The dataset store, run against both backends: the local folder and a real S3 server."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import pytest

from app.storage.datasets import DatasetStore, DatasetStoreError, NewImage
from app.storage.local import LocalObjects
from tests.helpers import image_bytes, pattern_image


def _png(kind: str, seed: int) -> bytes:
    return image_bytes(pattern_image(kind, 24, seed=seed))


def _images(label: str, kind: str, seeds: range) -> list[NewImage]:
    return [NewImage(label, f"{kind}-{s}.png", data=_png(kind, s)) for s in seeds]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.services)])
def store(request, tmp_path) -> DatasetStore:
    if request.param == "local":
        return DatasetStore(LocalObjects(tmp_path / "datasets"))
    from app.storage.s3 import S3Objects

    place = request.getfixturevalue("s3_bucket")
    return DatasetStore(S3Objects.from_url(place + "/.datasets"))


def test_versions_are_manifests_and_images_are_stored_once(store) -> None:
    first = store.create("pets", _images("cat", "hstripes", range(3)))
    assert (first.version, first.changed, len(first.added)) == (1, True, 3)
    again = store.add("pets", _images("cat", "hstripes", range(2)))
    assert (again.version, again.changed, len(again.duplicates)) == (1, False, 2)
    second = store.add("pets", _images("dog", "vstripes", range(2)))
    assert second.version == 2
    image = second.added[0]
    assert store.relabel("pets", image, "cat") == 3
    assert store.remove("pets", first.added[0]) == 4
    assert store.versions("pets") == [1, 2, 3, 4]
    assert store.summary("pets")["classes"] == {"cat": 3, "dog": 1}
    assert store.version_info("pets", 1)["classes"] == {"cat": 3}
    diff = store.diff("pets", 1, 4)
    assert [r["id"] for r in diff["removed"]] == [first.added[0]]
    assert diff["classes_added"] == ["dog"] and len(diff["added"]) == 2
    assert store.diff("pets", 2, 3)["relabelled"] == [{"id": image, "old": "dog", "to": "cat"}]
    # Five distinct images stored, each once.
    assert len(store.objects.keys("pets/images/")) == 5


def test_two_adds_at_once_both_land(store) -> None:
    store.create("race")
    errors: list[Exception] = []

    def add(label: str, kind: str) -> None:
        try:
            store.add("race", _images(label, kind, range(4)))
        except Exception as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)

    threads = [
        threading.Thread(target=add, args=("a", "hstripes")),
        threading.Thread(target=add, args=("b", "checks")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.versions("race") == [1, 2, 3]
    assert store.summary("race")["classes"] == {"a": 4, "b": 4}


def test_deleting_an_old_version_keeps_what_others_list(store) -> None:
    one = store.create("gc", _images("a", "hstripes", range(2)) + _images("b", "dark", range(2)))
    gone = one.added[0]
    store.remove("gc", gone)
    with pytest.raises(DatasetStoreError) as latest:
        store.delete_version("gc", 2)
    assert latest.value.code == "version_latest"
    store.delete_version("gc", 1)
    assert store.versions("gc") == [2]
    with pytest.raises(DatasetStoreError) as missing:
        store.image_bytes("gc", gone)
    assert missing.value.status == 404
    kept = store.manifest("gc")["images"]
    assert all(store.image_bytes("gc", i) for i in kept)
    store.delete("gc")
    assert store.names() == [] and store.objects.keys("gc/") == []


def test_materialize_and_export_give_back_the_images(store, tmp_path: Path) -> None:
    images = _images("a b", "hstripes", range(3)) + _images("ü", "checks", range(3))
    images.append(NewImage("ü", "hstripes-0.png", data=_png("checks", 99)))  # a name clash
    store.create("lay", images)
    ids = store.materialize("lay", 1, tmp_path / "out")
    assert len(ids) == 7 and store.file_ids("lay", 1) == ids
    for relative, image_id in ids.items():
        assert (tmp_path / "out" / relative).read_bytes() == store.image_bytes("lay", image_id)
    store.export("lay", 1, tmp_path / "x.zip")
    with zipfile.ZipFile(tmp_path / "x.zip") as zf:
        files = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    assert files == {k: (tmp_path / "out" / k).read_bytes() for k in ids}


def test_bad_names_labels_and_limits(tmp_path: Path) -> None:
    store = DatasetStore(LocalObjects(tmp_path / "d"))
    for bad, code in [("../x", "invalid_dataset_name"), ("", "invalid_dataset_name")]:
        with pytest.raises(DatasetStoreError) as err:
            store.create(bad)
        assert err.value.code == code
    store.create("ok")
    for label in ("a/b", ".hidden", " pad", "x" * 101, "tab\t"):
        with pytest.raises(DatasetStoreError) as err:
            store.add("ok", [NewImage(label, "f.png", data=_png("dark", 0))])
        assert err.value.code == "invalid_label"
    with pytest.raises(DatasetStoreError) as exists:
        store.create("ok")
    assert exists.value.code == "dataset_exists"
    small = DatasetStore(LocalObjects(tmp_path / "d"), _Limits(max_dataset_images=2))
    with pytest.raises(DatasetStoreError) as full:
        small.add("ok", _images("a", "dark", range(3)))
    assert (full.value.code, full.value.status) == ("dataset_too_large", 413)
    assert store.versions("ok") == [1]  # nothing written


class _Limits:
    def __init__(self, **values: int) -> None:
        self.__dict__.update(values)
