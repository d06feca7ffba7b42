import asyncio

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.main import create_app
from tests.helpers import hot_swap_under_load, image_bytes, pattern_image, write_toy_version

PNG = image_bytes(pattern_image("hstripes", 32), "PNG")


async def _predict(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/predict", files={"file": ("a.png", PNG, "image/png")})


@pytest.mark.parametrize("new_size", [32, 48], ids=["same-input-size", "other-input-size"])
def test_hot_swap_under_load_drops_nothing(registry, settings_for, new_size):
    # Another input size: requests decoded for version 1 are decoded again for version 2.
    write_toy_version(registry, "toy", ["circle", "square"], size=new_size, seed=5)
    app = create_app(settings_for(max_queue_size=1024))
    results, swapped_at = hot_swap_under_load(app, _predict)
    assert len(results) >= 320
    assert [r.status_code for _, r in results] == [200] * len(results)
    versions = [r.json()["version"] for _, r in results]
    assert versions.count(1) >= 60 and versions.count(2) >= 60
    after = [r.json()["version"] for started, r in results if started > swapped_at]
    assert after and set(after) == {2}


def test_full_queue_answers_503_with_retry_after(registry, settings_for):
    async def scenario() -> list[httpx.Response]:
        app = create_app(settings_for(max_queue_size=4, max_batch_size=2, batch_timeout_ms=50))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await asyncio.gather(*[_predict(client) for _ in range(60)])

    responses = asyncio.run(scenario())
    codes = {r.status_code for r in responses}
    assert codes == {200, 503}
    full = next(r for r in responses if r.status_code == 503)
    assert full.json()["code"] == "queue_full" and full.headers["retry-after"] == "1"


def test_concurrent_requests_are_batched(registry, settings_for):
    async def scenario() -> str:
        app = create_app(settings_for(max_batch_size=8, batch_timeout_ms=20))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                rs = await asyncio.gather(*[_predict(client) for _ in range(32)])
                assert all(r.status_code == 200 for r in rs)
                return (await client.get("/metrics")).text

    text = asyncio.run(scenario())
    count = float(text.split('convserve_batch_size_count{model="toy",version="1"} ')[1].split()[0])
    assert count < 32 / 2, "32 concurrent images should need far fewer than 16 batches"


@pytest.mark.parametrize("poll", [0.2])
def test_replica_follows_an_activation_made_elsewhere(registry, settings_for, poll):
    write_toy_version(registry, "toy", ["circle", "square"], seed=5)

    async def scenario() -> int:
        app = create_app(settings_for(registry_poll_seconds=poll))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await _predict(client)).json()["version"] == 1
                registry.set_active("toy", 2)  # another replica promotes version 2
                for _ in range(50):
                    await asyncio.sleep(0.1)
                    if (await _predict(client)).json()["version"] == 2:
                        return 2
                return 1

    assert asyncio.run(scenario()) == 2


def test_a_model_without_versions_starts_serving_once_one_is_written(registry, settings_for):
    async def scenario() -> tuple[str, str, int]:
        app = create_app(settings_for(served_models=["toy", "signs"], registry_poll_seconds=0.2))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                before = (await client.get("/models/signs")).json()["status"]
                write_toy_version(registry, "signs", ["a", "b", "c"])  # e.g. by `app train`
                for _ in range(50):
                    await asyncio.sleep(0.1)
                    if (await client.get("/models/signs")).json()["status"] == "ready":
                        break
                after = (await client.get("/models/signs")).json()["status"]
                r = await client.post(
                    "/predict",
                    params={"model": "signs"},
                    files={"file": ("a.png", PNG, "image/png")},
                )
                return before, after, r.status_code

    assert asyncio.run(scenario()) == ("failed", "ready", 200)


def test_two_activations_at_once_one_wins_and_the_other_gets_409(registry, settings_for):
    for seed in (5, 6):
        write_toy_version(registry, "toy", ["circle", "square"], seed=seed)

    async def scenario() -> tuple[list[httpx.Response], int]:
        app = create_app(settings_for())
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                # Both start before either has loaded its version.
                both = await asyncio.gather(
                    client.post("/models/toy/versions/2/activate"),
                    client.post("/models/toy/versions/3/activate"),
                )
                return list(both), (await _predict(client)).json()["version"]

    (two, three), serving = asyncio.run(scenario())
    assert sorted([two.status_code, three.status_code]) == [200, 409]
    winner, loser = (two, three) if two.status_code == 200 else (three, two)
    assert loser.json()["code"] == "activation_conflict"
    assert serving == winner.json()["active_version"] == registry.pointer("toy")
