"""Rollouts through the API, with real requests on fake versions (microseconds each): the
canary's share, pinned versions left alone, shadow answers unchanged with agreement
recorded, the guards that stop a failing, a slow and a disagreeing candidate, promote and
abort."""

from __future__ import annotations

import math
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.storage.registry import ModelRegistry
from tests.fakes import write_fake_version
from tests.helpers import image_bytes


@pytest.fixture
def api(tmp_path, fake_models, settings_for):
    """ "toy": version 1 active; 2 answers as 1 does; 3 names the classes the other way
    round (it never agrees); 4 fails every request; 5 answers as 1 does, 60 ms late."""
    registry = ModelRegistry(tmp_path / "models")
    write_fake_version(registry, "toy", ["circle", "square"])
    write_fake_version(registry, "toy", ["circle", "square"])
    write_fake_version(registry, "toy", ["square", "circle"])
    write_fake_version(registry, "toy", ["circle", "square"], fail=True)
    write_fake_version(registry, "toy", ["circle", "square"], delay=0.06)
    registry.set_active("toy", 1)
    with TestClient(create_app(settings_for(run_jobs=False))) as client:
        yield client


PHOTOS = [image_bytes(Image.new("RGB", (32, 32), (v, v, v))) for v in (20, 230)]


def predict(api, n: int, **params) -> list[int]:
    versions = []
    for i in range(n):
        r = api.post("/predict", params=params, files={"file": ("p.png", PHOTOS[i % 2])})
        assert r.status_code == 200, r.text
        versions.append(r.json()["version"])
    return versions


def rollout(api, **body) -> dict:
    r = api.put("/models/toy/rollout", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def status(api) -> dict:
    r = api.get("/models/toy/rollout")
    assert r.status_code == 200, r.text
    return r.json()


def settle(api) -> None:
    """Wait for the shadow runs in flight (they never hold up an answer)."""
    api.portal.call(api.app.state.rollouts.wait_idle)


def test_canary_share_is_within_binomial_bounds_and_pinned_requests_stay(api) -> None:
    started = rollout(api, version=2, mode="canary", share=0.1)
    assert (started["status"], started["baseline"], started["mode"]) == ("running", 1, "canary")
    served = predict(api, 1000)
    n = served.count(2)
    sigma = math.sqrt(1000 * 0.1 * 0.9)
    assert abs(n - 100) < 4 * sigma, n  # 4 sigma: fails once in about 16,000 runs
    assert set(served) == {1, 2}
    assert set(predict(api, 50, version=1)) == {1}  # pinned: never routed
    assert set(predict(api, 50, version=2)) == {2}
    figures = status(api)["figures"]
    assert figures["2"]["requests"] == n and figures["1"]["requests"] == 1000 - n
    shown = api.get("/models/toy").json()["rollout"]  # the model's page of the API has it too
    assert shown["mode"] == "canary" and shown["figures"]["2"]["requests"] == n
    assert figures["2"]["errors"] == 0 and figures["2"]["latency_ms"]["p50"] is not None
    settle(api)
    # What the candidate answered was run on the active version too: they agree.
    assert status(api)["figures"]["2"]["compared"] == n
    assert status(api)["figures"]["2"]["agreement"] == 1.0


def test_shadow_never_changes_an_answer_and_records_agreement(api) -> None:
    rollout(api, version=2, mode="shadow", share=1.0)
    answers = [
        api.post("/predict", files={"file": ("p.png", PHOTOS[i % 2])}).json() for i in range(40)
    ]
    assert {a["version"] for a in answers} == {1}
    settle(api)
    same = status(api)["figures"]["2"]
    assert (same["requests"], same["compared"], same["agreement"]) == (40, 40, 1.0)

    rollout(api, version=3, mode="shadow", share=1.0)  # replaces the first
    labels = {a["predictions"][0]["top"][0]["label"] for a in answers}
    again = [
        api.post("/predict", files={"file": ("p.png", PHOTOS[i % 2])}).json() for i in range(40)
    ]
    assert {a["version"] for a in again} == {1}
    assert {a["predictions"][0]["top"][0]["label"] for a in again} == labels
    settle(api)
    other = status(api)["figures"]["3"]
    assert other["compared"] == 40 and other["agreement"] == 0.0
    assert "convserve_shadow_predictions_total" in api.get("/metrics").text


def test_the_guard_stops_a_failing_candidate_and_clients_never_see_it(api) -> None:
    rollout(api, version=4, mode="canary", share=0.5, min_requests=10, max_error_rate=0.05)
    served = predict(api, 60)  # every answer succeeds: the active version steps in
    assert set(served) == {1}
    shown = stopped(api)
    assert shown["status"] == "stopped" and "error rate" in shown["reason"]
    assert shown["figures"]["4"]["errors"] >= 10
    assert set(predict(api, 40)) == {1}


def stopped(api) -> dict:
    """The rollout once a guard has ended it (the guards judge every second)."""
    deadline = time.time() + 10
    while (shown := status(api))["status"] == "running":
        assert time.time() < deadline, shown
        time.sleep(0.2)
    return shown


def test_the_guard_stops_a_slow_candidate(api) -> None:
    rollout(api, version=5, mode="canary", share=1.0, min_requests=10, max_p99_ms=50)
    assert set(predict(api, 12)) == {5}  # slow, but it answers
    shown = stopped(api)
    assert shown["status"] == "stopped" and "p99 latency 75 ms" in shown["reason"], shown
    assert shown["figures"]["5"]["latency_ms"]["p50"] == 75
    assert set(predict(api, 10)) == {1}  # the active version answers again


def test_the_guard_stops_a_candidate_that_disagrees(api) -> None:
    rollout(api, version=3, mode="shadow", share=1.0, min_requests=10, min_agreement=0.9)
    assert set(predict(api, 12)) == {1}
    settle(api)
    shown = stopped(api)
    assert shown["status"] == "stopped" and "agreement" in shown["reason"], shown
    assert shown["figures"]["3"]["agreement"] == 0.0
    assert api.get("/models/toy").json()["active_version"] == 1


def test_promote_and_abort(api) -> None:
    rollout(api, version=2, mode="canary", share=0.5)
    done = api.post("/models/toy/rollout/promote").json()
    assert done["status"] == "promoted"
    assert api.get("/models/toy").json()["rollout"] is None  # none running
    assert api.get("/models/toy").json()["active_version"] == 2
    assert set(predict(api, 20)) == {2}

    rollout(api, version=1, mode="shadow", share=1.0)
    gone = api.delete("/models/toy/rollout").json()
    assert (gone["status"], gone["reason"]) == ("aborted", "aborted by an admin")
    assert api.get("/models/toy").json()["active_version"] == 2
    r = api.post("/models/toy/rollout/promote")
    assert (r.status_code, r.json()["code"]) == (404, "rollout_not_found")


def test_a_candidate_cannot_be_deleted_and_activating_it_ends_the_rollout(api) -> None:
    rollout(api, version=2, mode="canary", share=0.5)
    r = api.delete("/models/toy/versions/2")
    assert (r.status_code, r.json()["code"]) == (409, "version_in_rollout")
    assert api.post("/models/toy/versions/2/activate").status_code == 200
    shown = status(api)
    assert (shown["status"], shown["reason"]) == ("promoted", "the candidate was activated")


def test_bad_rollouts_are_refused_with_their_reason(api) -> None:
    r = api.put("/models/toy/rollout", json={"version": 1, "mode": "canary"})
    assert (r.status_code, r.json()["code"]) == (409, "version_is_active")
    r = api.put("/models/toy/rollout", json={"version": 9, "mode": "canary"})
    assert (r.status_code, r.json()["code"]) == (404, "version_not_found")
    for body in ({"version": 2, "mode": "blue"}, {"version": 2, "mode": "canary", "share": 0}):
        assert api.put("/models/toy/rollout", json=body).status_code == 422
    r = api.get("/models/toy/rollout")
    assert (r.status_code, r.json()["code"]) == (404, "rollout_not_found")
    assert api.delete("/models/nope/rollout").status_code == 404
