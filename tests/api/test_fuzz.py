"""Schema-driven fuzzing: every operation of the running service, with valid and invalid
requests generated from its own OpenAPI (schemathesis), with every check schemathesis has:
no 5xx, nothing that contradicts the schema (status, content type, headers, body), no
schema-valid request refused but for the documented refusals that depend on what is inside
an image or an archive (`schemathesis.toml`), no invalid one accepted, the right ``Allow``
on a 405, answers in time.

Bounded and seeded, so a run is repeatable and fits the suite's time; ``bench/fuzz.py``
runs the same with many more examples.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection

from tests.helpers import make_dataset, toy_registry, write_toy_version, zip_directory
from tests.jobs.service import ROOT, Service

API_KEY = "fuzz-key"
EXAMPLES = 25
SEED = 20261126

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory):
    """The service on a toy registry ("toy" v1 and v2, and "spare" for the deletes), with
    an API key and one queued job (jobs are not run, so nothing trains meanwhile)."""
    root = tmp_path_factory.mktemp("fuzz")
    registry = toy_registry(root)
    write_toy_version(registry, "spare", ["a", "b"])
    service = Service(
        root,
        CONVSERVE_API_KEY=API_KEY,
        CONVSERVE_SERVED_MODELS="none",
        CONVSERVE_RUN_JOBS="false",
        CONVSERVE_MAX_QUEUED_JOBS="4",
    ).start()
    with service.client() as client:
        data = zip_directory(make_dataset(root / "upload", per_class=5, size=32))
        r = client.post(
            "/finetune",
            files={"dataset": ("d.zip", data)},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert r.status_code == 202, r.text
        service.job_id = r.json()["job_id"]
        # A labeller's key: train scope, limited to the toy model.
        r = client.post(
            "/keys",
            json={"name": "fuzz", "scopes": ["train"], "models": ["toy"]},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert r.status_code == 201, r.text
        service.train_key = r.json()["key"]
    yield service
    service.stop()


def _openapi() -> dict:
    """The service's OpenAPI document, as ``/openapi.json`` serves it (built without
    starting anything, so collection stays cheap)."""
    from app.config import Settings
    from app.main import create_app

    return create_app(Settings(served_models=[], run_jobs=False)).openapi()


schema = schemathesis.openapi.from_dict(
    _openapi(), config=SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
)
BOUNDED = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)


def _key_header(case, key: str) -> dict[str, str]:
    """The key, unless the case was generated without it on purpose (a negative header
    case: "a request missing its Authorization header"), which then goes as generated."""
    meta = case.meta
    missing = "Authorization" not in (case.headers or {})
    if meta is not None and meta.is_negative_at(ParameterLocation.HEADER) and missing:
        return {}
    return {"Authorization": f"Bearer {key}"}


def _call_and_validate(case, service, excluded_checks=(), key=API_KEY) -> None:
    case.call_and_validate(
        base_url=service.url,
        headers=_key_header(case, key),
        excluded_checks=list(excluded_checks),
        # Every check the configuration enables (all of them), max_response_time too.
        timeout=30,
    )


@schema.parametrize()
@BOUNDED
@hypothesis.seed(SEED)
def test_no_operation_answers_5xx_or_off_schema(case, fuzz_service):
    _call_and_validate(case, fuzz_service)


@schema.parametrize()
@hypothesis.settings(BOUNDED, max_examples=EXAMPLES // 2)
@hypothesis.seed(SEED)
def test_with_a_scoped_key_no_operation_answers_5xx_or_off_schema(case, fuzz_service):
    """A train key limited to one model: what it may not do is a documented 403."""
    _call_and_validate(case, fuzz_service, key=fuzz_service.train_key)


@schema.parametrize()
@BOUNDED
@hypothesis.seed(SEED)
def test_operations_on_existing_models_and_jobs(case, fuzz_service):
    """The same, with the path naming things that exist, so the fuzzed query and body
    reach the code behind the lookups."""
    existing = {
        "name": "spare" if case.method == "DELETE" else "toy",
        "version": "2",
        "label": "active",
        "job_id": fuzz_service.job_id,
    }
    for key in case.path_parameters or {}:
        if key in existing:
            case.path_parameters[key] = existing[key]
    # The path was made valid here, so a case generated as invalid may be invalid no more:
    # accepted invalid data is the first test's to find.
    _call_and_validate(case, fuzz_service, excluded_checks=[negative_data_rejection])
