"""Quotas shared by two API processes: their counters are in Redis, so a caller's
predictions a minute are counted once across both (real Redis on loopback)."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import image_bytes, pattern_image, toy_registry
from tests.jobs.service import Service
from tests.servers import start_redis

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_two_replicas_count_one_quota(tmp_path):
    redis = start_redis(tmp_path / "redis")
    toy_registry(tmp_path)
    env = {"CONVSERVE_PREDICT_RATE": "4/minute", "CONVSERVE_RATE_LIMIT_URL": redis.url}
    one = Service(tmp_path, CONVSERVE_RUN_JOBS="false", **env).start()
    two = Service(tmp_path, CONVSERVE_RUN_JOBS="false", **env).start()
    photo = image_bytes(pattern_image("checks", 32, seed=3))
    try:
        codes = []
        for service in (one, two, one, two, one, two):
            r = httpx.post(f"{service.url}/predict", files={"file": ("p.png", photo)}, timeout=60)
            codes.append(r.status_code)
        assert codes == [200, 200, 200, 200, 429, 429]
        assert int(r.headers["retry-after"]) >= 1 and r.json()["code"] == "rate_limited"
    finally:
        one.stop()
        two.stop()
        redis.stop()
