"""``convserve datasets ...`` and ``convserve finetune --dataset`` (a subprocess) against
the real service on loopback."""

from __future__ import annotations

import json
import zipfile

import pytest

from tests.client.test_command import convserve
from tests.helpers import make_dataset, toy_registry
from tests.jobs.service import Service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets-command")
    toy_registry(root)
    svc = Service(root, CONVSERVE_API_KEY="test-key", CONVSERVE_RUN_JOBS="false").start()
    yield svc
    svc.stop()


def _json(r) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_create_add_relabel_remove_export_and_train_from_a_dataset(service, tmp_path):
    folder = make_dataset(tmp_path / "photos", per_class=6, size=24)
    created = _json(convserve(service, "datasets", "create", "cli", folder, "--json"))
    assert (created["version"], created["added"]) == (1, 12)

    extra = make_dataset(tmp_path / "extra", classes=("dark",), per_class=3, size=24)
    r = convserve(service, "datasets", "add", "cli", "green", extra / "dark")
    assert r.returncode == 0, r.stderr
    assert "3 of 3 images added to class green" in r.stderr and "now version 2" in r.stderr

    page = _json(convserve(service, "datasets", "images", "cli", "--label", "green", "--json"))
    first, second = (item["id"] for item in page["items"][:2])
    moved = _json(convserve(service, "datasets", "relabel", "cli", first, "hstripes", "--json"))
    assert moved["version"] == 3
    r = convserve(service, "datasets", "relabel", "cli", second, "nope")
    assert r.returncode == 1 and "class_not_found" in r.stderr
    assert _json(convserve(service, "datasets", "remove", "cli", second, "--json"))["version"] == 4

    shown = _json(convserve(service, "datasets", "show", "cli", "--json"))
    assert shown["classes"] == {"green": 1, "hstripes": 7, "vstripes": 6}
    table = convserve(service, "datasets", "list")
    assert table.returncode == 0 and "cli" in table.stdout and "hstripes 7" in table.stdout

    out = _json(convserve(service, "datasets", "export", "cli", "1", "-o", tmp_path, "--json"))
    with zipfile.ZipFile(out["path"]) as zf:
        names = {n for n in zf.namelist() if not n.endswith("/")}
    assert names == {p.relative_to(folder).as_posix() for p in folder.rglob("*.*")}

    job = _json(convserve(service, "finetune", "--dataset", "cli:1", "--model", "n", "--json"))
    detail = _json(convserve(service, "jobs", job["job_id"], "--json"))
    assert (detail["dataset"]["name"], detail["dataset"]["version"]) == ("cli", 1)
    r = convserve(service, "finetune", "--dataset", "cli:x")
    assert r.returncode == 2 and "NAME or NAME:VERSION" in r.stderr
    r = convserve(service, "finetune")
    assert r.returncode == 2 and "--dataset NAME[:VERSION]" in r.stderr
    r = convserve(service, "datasets", "delete", "cli")
    assert r.returncode == 2 and "--yes" in r.stderr
