"""What SECURITY.md promises: an anonymous caller can predict and read, not change
anything; names that try to leave their folder (``../x`` and friends) are refused in every
route that takes a name, and nothing outside the registry is read, served or deleted."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.storage.registry import ModelRegistry
from tests.helpers import toy_registry, toy_settings, write_toy_version

API_KEY = "k"
HOSTILE = ["../x", "..", "../../x", "..\\x", "x/../../x", "%2e%2e/x", "/etc/passwd", "x\x00y"]


def _operations(app) -> list[tuple[str, str, list[str]]]:
    out = []
    for path, operations in app.openapi()["paths"].items():
        params = [p.strip("{}") for p in path.replace(":", "/").split("/") if p.startswith("{")]
        for method in operations:
            if params:
                out.append((method.upper(), path, params))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    toy_registry(root)
    # A model "x" next to the registry, where "../x" would lead.
    outside = ModelRegistry(root)
    write_toy_version(outside, "x", ["a", "b"])
    app = create_app(toy_settings(root, api_key=API_KEY))
    with TestClient(app) as client:
        yield root, app, client


def test_every_route_refuses_names_that_leave_their_folder(setup):
    root, app, client = setup
    before = sorted(p.relative_to(root) for p in (root / "x").rglob("*"))
    checked = 0
    for method, path, params in _operations(app):
        for hostile in HOSTILE:
            url = path
            for param in params:
                # Dots encoded too, or the client would resolve "/models/.." itself.
                value = quote(hostile, safe="").replace(".", "%2E")
                url = url.replace("{" + param + "}", value)
            r = client.request(
                method,
                url,
                headers={"Authorization": f"Bearer {API_KEY}"},
                files={"file": ("a.png", b"x")} if method == "POST" else None,
            )
            checked += 1
            assert r.status_code in (400, 404, 405, 415, 422), (method, url, r.status_code, r.text)
            if "text/html" not in r.headers["content-type"]:
                assert r.json()["code"], r.text
            assert "Traceback" not in r.text
    assert checked >= 25 * len(HOSTILE)  # every route with a name, each hostile name
    # Nothing outside the registry was read as a model or deleted.
    assert sorted(p.relative_to(root) for p in (root / "x").rglob("*")) == before
    assert ModelRegistry(root / "models").versions("toy") == [1, 2]


def test_a_registry_model_name_cannot_be_a_path(setup):
    root, _, client = setup
    r = client.post(
        "/finetune",
        data={"model": "../x"},
        files={"dataset": ("d.zip", b"PK")},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert r.status_code == 422 and r.json()["code"] == "invalid_parameters", r.text
    assert "model" in r.json()["detail"]
    assert not (root / "var" / "jobs").exists() or not any((root / "var" / "jobs").iterdir())


# The operations that change nothing but the caller's own answer, and what a predicting
# client reads (the protocols' metadata, the predict page): open to anyone by default.
ANONYMOUS = ("/predict", ":predict", ":classify", "/infer", "/metadata")
ANONYMOUS_PATHS = ("/", "/v2/models/{name}", "/v2/models/{name}/versions/{version}")
# Open to all: health, metrics, the catalogue of networks, the API's own documents, and
# forgetting the console's cookie.
# TF Serving's status of a model's versions, KServe's readiness.
OPEN = ("/healthz", "/readyz", "/metrics", "/architectures", "/v2")


def test_anonymous_callers_cannot_change_or_read_anything(setup):
    _, app, client = setup
    spec = app.openapi()
    refused = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "get" and path == "/keys/me":  # what a key may do, with or without one
                assert operation.get("security") == [{}, {"bearer": []}]
                continue
            if path.endswith(ANONYMOUS) or path in ANONYMOUS_PATHS:
                # A key is asked only with CONVSERVE_PUBLIC_PREDICTIONS=false (test_keys.py).
                assert operation.get("security") == [{}, {"bearer": []}], (method, path)
                url = path.replace("{name}", "toy").replace("{version}", "1")
                r = client.request(method.upper(), url)
                assert r.status_code not in (401, 403), (method, path, r.text)
                continue
            if "security" not in operation:
                # Health, metrics, the catalogue, probes and forgetting the cookie.
                status = path.startswith("/v1/models/") or path.endswith("/ready")
                probe = status or "/health/" in path
                assert path in OPEN or probe or path == "/session", (method, path)
                continue
            # Everything else reads or changes models, jobs, datasets or keys: a key.
            assert operation.get("security") == [{"bearer": []}], (method, path)
            url = path.replace("{name}", "toy").replace("{version}", "1")
            url = url.replace("{job_id}", "0" * 16)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k"}):
                r = client.request(method.upper(), url, headers=headers)
                assert r.status_code == 401, (method, url, r.status_code, r.text)
                if r.headers["content-type"].startswith("text/html"):  # a console page
                    assert 'data-code="unauthorized"' in r.text and 'id="key-form"' in r.text
                else:
                    assert r.json()["code"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
                refused += 1
    assert refused >= 50 * 3
    assert ModelRegistry(setup[0] / "models").versions("toy") == [1, 2]
