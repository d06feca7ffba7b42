import os

# Quiet TensorFlow's start-up chatter in test output; never download weights in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CONVSERVE_PRETRAINED", "none")
# Jobs skip the precision study (IR conversion and int8 quantization, 10-60 s a version);
# tests/serving/test_precision.py runs it.
os.environ.setdefault("CONVSERVE_PRECISION_STUDY", "0")
# Nor the label-health report (a second or more per job); the tests of the learning loop
# (tests/jobs/test_review_loop.py, the console's review test) turn it on.
os.environ.setdefault("CONVSERVE_LABEL_HEALTH", "0")

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.storage.registry import ModelRegistry
from tests.fakes import fake_models, write_fake_version
from tests.helpers import write_toy_version


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "models")
    write_toy_version(reg, "toy", ["circle", "square"], seed=0)
    reg.set_active("toy", 1)
    return reg


@pytest.fixture
def fake_registry(tmp_path: Path, fake_models: None) -> ModelRegistry:
    """A registry whose "toy" model is a fake (`tests.fakes`): for route tests where
    loading Keras is not the point."""
    reg = ModelRegistry(tmp_path / "models")
    write_fake_version(reg, "toy", ["circle", "square"])
    reg.set_active("toy", 1)
    return reg


__all__ = ["fake_models"]


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = dict(
            models_dir=tmp_path / "models",
            data_dir=tmp_path / "var",
            served_models=["toy"],
            default_model="toy",
            pretrained="none",
            bootstrap_image_size=32,
            registry_poll_seconds=0,
            # Route tests use Keras (no IR conversion per test); tests/serving covers OpenVINO.
            backend="keras",
        )
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def client(registry: ModelRegistry, settings_for: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for())) as c:
        yield c


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (skips, saying why, where none starts)."""
    from tests.servers import postgres_server

    try:
        server = postgres_server()
        url = server.__enter__()
    except Exception as exc:
        pytest.skip(f"PostgreSQL could not be started: {exc}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[object]:
    """A real Redis server for one test (`tests.servers.RedisServer`: a test may stop and
    start it). Skips, saying why, where none starts."""
    from tests.servers import start_redis

    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def empty_postgres(postgres_url: str) -> str:
    """The session's PostgreSQL with an empty job store."""
    from tests.servers import empty_job_store

    return empty_job_store(postgres_url)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 server (SeaweedFS) for the session; skips, saying why, where none starts.
    Sets the AWS settings boto3 reads (endpoint, region, keys) for the test process and
    the services it starts."""
    from tests.servers import s3_server

    try:
        server = s3_server(tmp_path_factory.mktemp("seaweedfs"))
        url = server.__enter__()
    except Exception as exc:
        pytest.skip(f"the S3 server (SeaweedFS) could not be started: {exc}")
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="convserve",
        AWS_SECRET_ACCESS_KEY="convserve",
    )
    try:
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.__exit__(None, None, None)


S3_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """An empty place in the S3 server (`tests.servers.new_s3_place`)."""
    from tests.servers import new_s3_place

    return new_s3_place()
