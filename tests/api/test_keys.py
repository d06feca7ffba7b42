"""Scoped API keys: every operation that needs a key, against no key, a wrong key, a key of
each scope and a key limited to another model (table-driven over the OpenAPI document);
keys shown once and stored hashed; revocation; the audit log; keyed predictions."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.storage.keys import KeyStore
from app.storage.registry import ModelRegistry
from tests.fakes import write_fake_version
from tests.helpers import image_bytes

BOOT = "bootstrap-key"
PHOTO = image_bytes(Image.new("RGB", (32, 32), (40, 40, 40)))

# The scope each operation needs: admin for what changes what serves, exports or keys;
# train for datasets, jobs and the review queue, and to see the users' photos; predict for
# the other reads. Every secured operation is in one of these or is a change (train).
ADMIN = {
    ("post", "/models/{name}/versions/{version}/activate"),
    ("delete", "/models/{name}/versions/{version}"),
    ("delete", "/models/{name}"),
    ("get", "/models/{name}/versions/{version}/export"),
    ("put", "/models/{name}/capture"),
    ("delete", "/models/{name}/capture"),
    ("get", "/review/export"),
    ("get", "/datasets/{name}/versions/{version}/export"),
    ("put", "/models/{name}/rollout"),
    ("delete", "/models/{name}/rollout"),
    ("post", "/models/{name}/rollout/promote"),
    ("post", "/keys"),
    ("get", "/keys"),
    ("delete", "/keys/{key_id}"),
    ("get", "/audit"),
}
PHOTOS = {
    ("get", "/models/{name}/versions/{version}/validation"),
    ("get", "/models/{name}/versions/{version}/validation/{file}"),
    ("get", "/models/{name}/versions/{version}/validation/{file}/gradcam"),
    ("get", "/datasets/{name}/images"),
    ("get", "/datasets/{name}/images/{image_id}"),
    ("get", "/review"),
    ("get", "/review/{capture_id}"),
    ("get", "/review/{capture_id}/image"),
    ("get", "/console/datasets/{name}"),
    ("get", "/console/datasets/{name}/health"),
    ("get", "/console/review"),
}
# Open to callers without a key while predictions are (tested on their own).
KEY_OPTIONAL = (":predict", ":classify", "/infer", "/metadata")
KEY_OPTIONAL_PATHS = ("/", "/predict", "/keys/me", "/v2/models/{name}")


def needed_scope(method: str, path: str) -> str:
    if (method, path) in ADMIN:
        return "admin"
    if (method == "get" and (method, path) not in PHOTOS) or path == "/session":
        return "predict"
    return "train"


def refusal(r) -> tuple[int, str]:
    """The status and code of a refusal: the API's JSON, or the console page that asks for
    a key (its code in the page)."""
    if r.headers["content-type"].startswith("text/html"):
        assert 'data-locked="true"' in r.text and "key-form" in r.text
        return r.status_code, r.text.split('data-code="', 1)[1].split('"', 1)[0]
    return r.status_code, r.json()["code"]


def headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture
def api(tmp_path, fake_models, settings_for):
    registry = ModelRegistry(tmp_path / "models")
    write_fake_version(registry, "toy", ["circle", "square"])
    registry.set_active("toy", 1)
    write_fake_version(registry, "other", ["a", "b"])
    registry.set_active("other", 1)
    settings = settings_for(run_jobs=False, api_key=BOOT, served_models=["toy", "other"])
    with TestClient(create_app(settings)) as client:
        yield client


def make_key(api, scopes, models=None, name="k") -> dict:
    body = {"name": name, "scopes": scopes, **({"models": models} if models else {})}
    r = api.post("/keys", json=body, headers=headers(BOOT))
    assert r.status_code == 201, r.text
    return r.json()


def test_every_secured_operation_against_each_kind_of_key(api) -> None:
    keys = {
        "predict": make_key(api, ["predict"])["key"],
        "train": make_key(api, ["train"])["key"],
        "admin": make_key(api, ["admin"])["key"],
        "other-only": make_key(api, ["admin"], models=["other"])["key"],
    }
    spec = api.app.openapi()
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "security" not in operation or path.endswith(KEY_OPTIONAL):
                continue
            if path.startswith(KEY_OPTIONAL_PATHS[-1]) or path in KEY_OPTIONAL_PATHS:
                continue
            needed = needed_scope(method, path)
            # A model or a thing that does not exist: an allowed key gets 404/422, never an
            # answer that changed something.
            url = path.replace("{name}", "nope").replace("{version}", "99")
            url = url.replace("{job_id}", "0" * 16).replace("{capture_id}", "0" * 32)
            url = url.replace("{image_id}", "0" * 64).replace("{key_id}", "0" * 12)
            url = url.replace("{file}", "x.jpg")
            for key, allowed in (
                (None, False),
                ("wrong", False),
                ("cs_000000000000_nothing", False),
                (keys["predict"], needed == "predict"),
                (keys["train"], needed != "admin"),
                (keys["admin"], True),
                (BOOT, True),
            ):
                r = api.request(method.upper(), url, headers=headers(key))
                api.cookies.clear()  # POST /session's cookie: tested on its own
                if allowed:
                    assert r.status_code not in (401, 403), (method, url, key, r.text)
                elif key in (None, "wrong", "cs_000000000000_nothing"):
                    assert refusal(r) == (401, "unauthorized"), (method, url)
                    assert r.headers["www-authenticate"] == "Bearer"
                else:
                    assert refusal(r) == (403, "forbidden"), (method, url)
                    assert f"{needed!r} scope" in html.unescape(r.text)
                checked += 1
            if "{name}" in path and path.startswith(("/models/", "/console/models/")):
                limited = path.replace("{name}", "toy").replace("{version}", "99")
                limited = limited.replace("{file}", "x.jpg")
                r = api.request(method.upper(), limited, headers=headers(keys["other-only"]))
                assert refusal(r) == (403, "model_not_allowed"), limited
    assert checked >= 60 * 7


def test_a_key_is_shown_once_and_stored_as_a_hash(api) -> None:
    made = make_key(api, ["train"], name="labeller")
    assert made["key"].startswith(made["prefix"] + "_") and made["scopes"] == ["train"]
    listed = api.get("/keys", headers=headers(BOOT)).json()["keys"]
    assert [k["name"] for k in listed] == ["labeller"]
    assert made["key"] not in str(listed) and "hash" not in listed[0]
    engine = sa.create_engine(f"sqlite:///{api.app.state.settings.data_dir / 'jobs.sqlite'}")
    with engine.connect() as db:
        (stored,) = db.execute(sa.text("SELECT hash FROM api_keys")).one()
    assert stored != made["key"] and stored.startswith("$argon2id$") and made["key"] not in stored


def test_a_key_says_what_it_may_do(api) -> None:
    made = make_key(api, ["train"], models=["toy"])
    me = api.get("/keys/me", headers=headers(made["key"])).json()
    assert me == {
        "key_id": made["id"],
        "scopes": ["predict", "train"],
        "models": ["toy"],
        "keys_on": True,
    }
    assert api.get("/keys/me").json() == {
        "key_id": None,
        "scopes": [],
        "models": None,
        "keys_on": True,
    }
    assert api.get("/keys/me", headers=headers(BOOT)).json()["scopes"] == [
        "predict",
        "train",
        "admin",
    ]
    assert api.get("/keys/me", headers=headers("wrong")).status_code == 401


def test_revoked_keys_are_refused_at_once(api) -> None:
    made = make_key(api, ["train"])
    r = api.post("/datasets", data={"name": "d"}, headers=headers(made["key"]))
    assert r.status_code == 201
    revoked = api.delete(f"/keys/{made['id']}", headers=headers(BOOT)).json()
    assert revoked["revoked_at"] is not None
    r = api.post("/datasets", data={"name": "e"}, headers=headers(made["key"]))
    assert r.status_code == 401
    r = api.delete("/keys/000000000000", headers=headers(BOOT))
    assert (r.status_code, r.json()["code"]) == (404, "key_not_found")
    assert (
        api.post("/keys", json={"name": "x", "scopes": ["root"]}, headers=headers(BOOT)).status_code
        == 422
    )


def test_the_audit_log_records_who_did_what(api) -> None:
    trainer = make_key(api, ["train"], name="labeller")
    assert (
        api.post("/datasets", data={"name": "d"}, headers=headers(trainer["key"])).status_code
        == 201
    )
    assert (
        api.post("/models/toy/versions/1/activate", headers=headers(trainer["key"])).status_code
        == 403
    )
    assert api.post("/models/toy/versions/1/activate").status_code == 401
    page = api.get("/audit", headers=headers(BOOT)).json()
    seen = [(e["key_id"], e["method"], e["path"], e["status"], e["scope"]) for e in page["items"]]
    assert (None, "POST", "/models/toy/versions/1/activate", 401, "admin") in seen
    assert (trainer["id"], "POST", "/models/toy/versions/1/activate", 403, "admin") in seen
    assert (trainer["id"], "POST", "/datasets", 201, "train") in seen
    assert ("bootstrap", "POST", "/keys", 201, "admin") in seen
    assert all(e["client"] for e in page["items"])
    mine = api.get("/audit", params={"key_id": trainer["id"]}, headers=headers(BOOT)).json()
    assert mine["total"] == 2
    # Predictions and reads are not actions.
    api.post("/predict", files={"file": ("p.png", PHOTO)})
    after = api.get("/audit", headers=headers(BOOT)).json()["total"]
    assert after == page["total"] + 2  # the two reads of the log above, not the prediction


def test_keyed_predictions_need_a_predict_key_for_the_model(tmp_path, fake_models, settings_for):
    registry = ModelRegistry(tmp_path / "models")
    write_fake_version(registry, "toy", ["circle", "square"])
    registry.set_active("toy", 1)
    settings = settings_for(run_jobs=False, api_key=BOOT, public_predictions=False)
    with TestClient(create_app(settings)) as api:
        key = make_key(api, ["predict"])["key"]
        limited = make_key(api, ["predict"], models=["other"])["key"]
        r = api.post("/predict", files={"file": ("p.png", PHOTO)})
        assert r.status_code == 401
        r = api.post("/predict", files={"file": ("p.png", PHOTO)}, headers=headers(key))
        assert r.status_code == 200
        r = api.post("/predict", files={"file": ("p.png", PHOTO)}, headers=headers(limited))
        assert (r.status_code, r.json()["code"]) == (403, "model_not_allowed")
        body = {"instances": [{"b64": __import__("base64").b64encode(PHOTO).decode()}]}
        assert api.post("/v1/models/toy:predict", json=body).status_code == 401
        assert (
            api.post("/v1/models/toy:predict", json=body, headers=headers(key)).status_code == 200
        )


def test_reads_need_a_key_and_photos_a_train_key(tmp_path, fake_models, settings_for):
    registry = ModelRegistry(tmp_path / "models")
    write_fake_version(registry, "toy", ["circle", "square"])
    registry.set_active("toy", 1)
    with TestClient(create_app(settings_for(run_jobs=False, api_key=BOOT))) as api:
        assert api.post("/datasets", data={"name": "d"}, headers=headers(BOOT)).status_code == 201
        made = api.post(
            "/datasets/d/images", params={"label": "circle"},
            files={"file": ("a.png", PHOTO)}, headers=headers(BOOT),
        )  # fmt: skip
        assert made.status_code == 201, made.text
        image = api.get("/datasets/d/images", headers=headers(BOOT)).json()["items"][0]["id"]
        predict, train = make_key(api, ["predict"])["key"], make_key(api, ["train"])["key"]
        for path in ("/models", "/models/toy", "/finetune", "/datasets", "/datasets/d"):
            assert api.get(path).status_code == 401, path
            assert api.get(path, headers=headers(predict)).status_code == 200, path
        for path in ("/datasets/d/images", f"/datasets/d/images/{image}", "/review"):
            r = api.get(path, headers=headers(predict))
            assert (r.status_code, r.json()["code"]) == (403, "forbidden"), path
            assert api.get(path, headers=headers(train)).status_code == 200, path
        # The console asks for a key instead of showing the page.
        page = api.get("/console/models")
        assert page.status_code == 401 and 'id="key-form"' in page.text
        assert api.get("/console/models", headers=headers(predict)).status_code == 200

    # CONVSERVE_PUBLIC_READS=true opens the reads; the photos still need a train key.
    settings = settings_for(run_jobs=False, api_key=BOOT, public_reads=True)
    with TestClient(create_app(settings)) as api:
        assert api.get("/models/toy").status_code == 200
        assert api.get("/console/datasets").status_code == 200
        assert api.get("/datasets/d/images").status_code == 401
        assert api.get("/console/review").status_code == 401


def test_the_consoles_read_cookie_reads_and_never_acts(api) -> None:
    trainer = make_key(api, ["train"])["key"]
    assert api.post("/session").status_code == 401
    assert api.post("/session", headers=headers("wrong")).status_code == 401
    r = api.post("/session", headers=headers(trainer))
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"convserve_key={trainer};") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Path=/" in cookie
    # Pages, images and event streams load with the cookie alone...
    assert api.get("/models/toy").status_code == 200
    assert api.get("/console/review").status_code == 200
    assert api.get("/review").status_code == 200
    # ...but no action does, so another site's page cannot act through it.
    r = api.post("/datasets", data={"name": "d"})
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    r = api.delete("/session")
    assert r.status_code == 204 and 'convserve_key=""' in r.headers["set-cookie"]
    assert api.get("/models/toy").status_code == 401


def test_an_open_service_closes_once_a_key_exists(tmp_path, fake_models, settings_for):
    registry = ModelRegistry(tmp_path / "models")
    write_fake_version(registry, "toy", ["circle", "square"])
    registry.set_active("toy", 1)
    with TestClient(create_app(settings_for(run_jobs=False))) as api:
        assert api.post("/datasets", data={"name": "a"}).status_code == 201  # open: no key
        r = api.post("/keys", json={"name": "first", "scopes": ["admin"]})
        assert r.status_code == 201
        admin = r.json()["key"]
        assert api.post("/datasets", data={"name": "b"}).status_code == 401
        assert api.post("/datasets", data={"name": "b"}, headers=headers(admin)).status_code == 201


def test_quotas_answer_429_with_retry_after_per_caller(tmp_path, fake_models, settings_for):
    registry = ModelRegistry(tmp_path / "models")
    write_fake_version(registry, "toy", ["circle", "square"])
    registry.set_active("toy", 1)
    settings = settings_for(
        run_jobs=False, api_key=BOOT, predict_rate="3/minute", uploads_per_day=2
    )
    with TestClient(create_app(settings)) as api:
        app_key = make_key(api, ["predict"], name="app")["key"]
        tight = api.post(
            "/keys",
            json={"name": "tight", "scopes": ["train"], "limits": {"predict": "1/minute"}},
            headers=headers(BOOT),
        ).json()["key"]

        def predict(key=None):
            return api.post("/predict", files={"file": ("p.png", PHOTO)}, headers=headers(key))

        # Anonymous callers (by address) and each key count on their own.
        assert [predict().status_code for _ in range(4)] == [200, 200, 200, 429]
        refused = predict()
        assert refused.json()["code"] == "rate_limited" and "3/minute" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert [predict(app_key).status_code for _ in range(4)] == [200, 200, 200, 429]
        assert [predict(tight).status_code for _ in range(2)] == [200, 429]  # its own limit

        made = [
            api.post("/datasets", data={"name": f"d{i}"}, headers=headers(tight)).status_code
            for i in range(3)
        ]
        assert made == [201, 201, 429]
        bad = api.post(
            "/keys",
            json={"name": "x", "scopes": ["predict"], "limits": {"predict": "lots"}},
            headers=headers(BOOT),
        )
        assert bad.status_code == 422


def test_the_audit_log_keeps_its_days_and_drops_older_entries(tmp_path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite", audit_days=30)
    for _ in range(3):
        store.record("bootstrap", "POST", "/keys", 201, "10.0.0.1", "admin")
    aged = {1: 31, 2: 29}  # days ago; entry 3 is from now
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.sqlite'}")
    with engine.begin() as db:
        for seq, days in aged.items():
            at = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")
            db.execute(
                sa.text("UPDATE audit_log SET at = :at WHERE seq = :seq"), {"at": at, "seq": seq}
            )
    # The next entry written (here by a replica that just started) drops what is past 30 days.
    later = KeyStore(tmp_path / "keys.sqlite", audit_days=30)
    later.record("bootstrap", "DELETE", "/keys/x", 204, "10.0.0.1", "admin")
    entries, total = later.audit()
    assert total == 3 and sorted(e["seq"] for e in entries) == [2, 3, 4]


def _noise(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return image_bytes(Image.fromarray(pixels))  # about 12 kB of PNG


def test_bytes_stored_quota_refuses_the_upload_past_it_until_a_dataset_goes(api) -> None:
    assert api.post(
        "/keys", json={"name": "x", "scopes": ["train"], "limits": {"stored": "lots"}},
        headers=headers(BOOT),
    ).status_code == 422  # fmt: skip
    key = api.post(
        "/keys", json={"name": "small", "scopes": ["train"], "limits": {"stored": "30kB"}},
        headers=headers(BOOT),
    ).json()["key"]  # fmt: skip
    for name in ("a", "b"):
        assert api.post("/datasets", data={"name": name}, headers=headers(key)).status_code == 201

    def add(dataset: str, seed: int):
        return api.post(
            f"/datasets/{dataset}/images", params={"label": "x"},
            files={"file": ("n.png", _noise(seed))}, headers=headers(key),
        )  # fmt: skip

    assert add("a", 1).status_code == 201
    assert add("b", 2).status_code == 201
    r = add("b", 3)  # a third 12 kB would pass 30 kB
    assert (r.status_code, r.json()["code"]) == (507, "storage_quota")
    assert "quota is 30.0 kB" in r.json()["detail"]
    assert api.get("/datasets/b", headers=headers(key)).json()["images"] == 1  # nothing kept
    # Deleting a dataset gives its bytes back.
    assert api.delete("/datasets/a", headers=headers(key)).status_code == 204
    assert add("b", 3).status_code == 201


def test_a_key_limited_to_a_model_sees_only_that_models_models_and_jobs(api, tmp_path) -> None:
    from tests.helpers import make_dataset, zip_directory

    archive = zip_directory(make_dataset(tmp_path / "ds", per_class=6, size=32))
    r = api.post(
        "/finetune", files={"dataset": ("d.zip", archive)}, data={"model": "toy"},
        headers=headers(BOOT),
    )  # fmt: skip
    assert r.status_code == 202, r.text
    job = r.json()["job_id"]
    limited = make_key(api, ["train"], models=["other"])["key"]
    names = [m["name"] for m in api.get("/models", headers=headers(limited)).json()["models"]]
    assert names == ["other"]
    assert api.get("/finetune", headers=headers(limited)).json()["jobs"] == []
    for method, path in (("GET", f"/finetune/{job}"), ("GET", f"/finetune/{job}/events"),
                         ("DELETE", f"/finetune/{job}")):  # fmt: skip
        r = api.request(method, path, headers=headers(limited))
        assert (r.status_code, r.json()["code"]) == (403, "model_not_allowed"), path
    assert [j["job_id"] for j in api.get("/finetune", headers=headers(BOOT)).json()["jobs"]] == [
        job
    ]
