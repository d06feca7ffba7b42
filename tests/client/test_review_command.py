"""``convserve capture``, ``review``, ``retrain`` and ``health`` (a subprocess) against the
real service on loopback."""

from __future__ import annotations

import json
import time

import pytest

from tests.client.test_command import convserve
from tests.helpers import image_bytes, pattern_image, toy_registry
from tests.jobs.service import Service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-command")
    toy_registry(root)
    svc = Service(root, CONVSERVE_API_KEY="test-key", CONVSERVE_RUN_JOBS="false").start()
    yield svc
    svc.stop()


def _json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow  # 18 s: a service start and some twenty commands
def test_capture_review_and_the_errors_that_say_what_to_do(service, tmp_path):
    on = _json(
        convserve(
            service,
            "capture",
            "set",
            "toy",
            "--below-score",
            "-1",
            "--sample-rate",
            "1",
            "--max-per-hour",
            "50",
            "--json",
        )
    )
    assert on["enabled"] and on["settings"]["below_score"] is None
    shown = convserve(service, "capture", "show", "toy")
    assert "capture is on for toy: no threshold, sampling 1" in shown.stdout

    photos = []
    for i in range(3):
        path = tmp_path / f"photo-{i}.png"
        path.write_bytes(image_bytes(pattern_image("checks", 32, seed=400 + i)))
        photos.append(path)
    assert convserve(service, "predict", *photos, "--model", "toy").returncode == 0
    deadline = time.time() + 20
    while (page := _json(convserve(service, "review", "list", "--model", "toy", "--json")))[
        "total"
    ] < 3:
        assert time.time() < deadline, page
        time.sleep(0.3)
    ids = [item["id"] for item in page["items"]]

    # The toy model trained on no stored dataset: accept says to name one.
    r = convserve(service, "review", "accept", ids[0])
    assert r.returncode == 1 and "no_dataset" in r.stderr
    done = _json(
        convserve(
            service,
            "review",
            "accept",
            ids[0],
            ids[1],
            "--label",
            "round",
            "--dataset",
            "kept",
            "--json",
        )
    )
    assert [d["version"] for d in done] == [1, 2] and done[0]["new_class"] is True
    assert _json(convserve(service, "datasets", "show", "kept", "--json"))["classes"] == {
        "round": 2
    }
    r = convserve(service, "review", "discard", ids[2])
    assert r.returncode == 0 and f"{ids[2]}: discarded" in r.stderr

    r = convserve(service, "health", "kept")
    assert r.returncode == 1 and "no_model" in r.stderr
    r = convserve(service, "retrain", "toy")
    assert r.returncode == 1 and "no_dataset" in r.stderr

    assert convserve(service, "predict", photos[0], "--model", "toy").returncode == 0
    r = convserve(service, "review", "clear", "--model", "toy")
    assert r.returncode == 2 and "--yes" in r.stderr  # a usage error, as argparse's
    deadline = time.time() + 20
    while _json(convserve(service, "review", "list", "--model", "toy", "--json"))["total"] < 1:
        assert time.time() < deadline
        time.sleep(0.3)
    cleared = _json(convserve(service, "review", "clear", "--model", "toy", "--yes", "--json"))
    assert cleared == {"deleted": 1}
    off = _json(convserve(service, "capture", "off", "toy", "--json"))
    assert off["enabled"] is False


@pytest.mark.slow  # a few seconds on the module's service
def test_keys_create_list_use_revoke_and_the_audit(service, tmp_path):
    made = _json(convserve(service, "keys", "create", "labeller", "--scope", "train", "--json"))
    assert made["key"].startswith("cs_") and made["scopes"] == ["train"]
    shown = convserve(service, "keys", "list")
    assert made["id"] in shown.stdout and made["key"] not in shown.stdout
    reader = _json(convserve(service, "keys", "create", "app", "--scope", "predict", "--json"))
    capped = convserve(
        service, "keys", "create", "cap", "--scope", "train",
        "--quota", "stored=2GB", "--quota", "uploads=50/day",
    )  # fmt: skip
    assert capped.returncode == 0
    assert "stored 2GB" in capped.stderr and "uploads 50/day" in capped.stderr
    r = convserve(service, "keys", "create", "cap", "--scope", "train", "--quota", "disk=1")
    assert r.returncode == 2 and "KIND=VALUE" in r.stderr

    r = convserve(service, "datasets", "create", "by-reader", "--api-key", reader["key"])
    assert r.returncode == 1 and "'train' scope" in r.stderr
    r = convserve(service, "datasets", "create", "by-labeller", "--api-key", made["key"])
    assert r.returncode == 0, r.stderr

    log = _json(convserve(service, "audit", "--key", made["id"], "--json"))
    assert [(e["method"], e["path"], e["status"]) for e in log["items"]] == [
        ("POST", "/datasets", 201)
    ]
    assert _json(convserve(service, "keys", "revoke", made["id"], "--json"))["revoked_at"]
    r = convserve(service, "datasets", "create", "again", "--api-key", made["key"])
    assert r.returncode == 1 and "unauthorized" in r.stderr
