"""The Python client: its error type, its inputs and its event iterator (reconnection).

The HTTP side is an httpx MockTransport here, so that a dropped stream can be staged;
tests/client/test_command.py runs the client against the real service."""

import asyncio
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from app.client import APIError, AsyncClient, Client


def _mock(handler) -> Client:
    return Client("http://cs", transport=httpx.MockTransport(handler))


def _sse(*events: tuple[int, str, dict]) -> bytes:
    return "".join(
        f"id: {i}\nevent: {kind}\ndata: {json.dumps(data)}\n\n" for i, kind, data in events
    ).encode()


def test_api_errors_carry_status_code_and_detail():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"detail": "version 1 is active", "code": "version_active"})

    with _mock(handler) as client, pytest.raises(APIError) as caught:
        client.delete_version("toy", 1)
    assert (caught.value.status, caught.value.code) == (409, "version_active")
    assert caught.value.detail == "version 1 is active"


def test_a_non_json_error_and_an_unreachable_service_are_api_errors_too():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway")

    with _mock(handler) as client, pytest.raises(APIError) as caught:
        client.models()
    assert (caught.value.status, caught.value.code) == (502, "http_error")

    with Client("http://127.0.0.1:9", timeout=2) as client, pytest.raises(APIError) as caught:
        client.models()
    assert caught.value.status == 0 and caught.value.code == "unreachable"
    assert "cannot reach the service at http://127.0.0.1:9" in caught.value.detail


def test_key_url_and_image_inputs(monkeypatch, tmp_path):
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers.get("authorization")
        seen["url"] = str(request.url)
        seen["body"] = request.read()
        n = seen["body"].count(b'name="file"')
        top = [{"label": "a", "index": 0, "score": 1.0}]
        preds = [{"filename": f"f{i}", "top": top} for i in range(n)]
        return httpx.Response(200, json={"model": "toy", "version": 3, "predictions": preds})

    monkeypatch.setenv("CONVSERVE_API_KEY", "secret")
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path)
    images = [
        path,
        str(path),
        path.read_bytes(),
        Image.new("L", (5, 5)),
        np.zeros((6, 6, 3), np.uint8),
        ("named.png", path.read_bytes()),
    ]
    with Client("http://cs/", transport=httpx.MockTransport(handler)) as client:
        answer = client.predict(images, model="toy", top_k=1)
    assert seen["auth"] == "Bearer secret"
    assert seen["url"] == "http://cs/predict?top_k=1&model=toy"
    assert len(answer.predictions) == 6 and answer.version == 3
    assert b'filename="named.png"' in seen["body"] and b'filename="x.png"' in seen["body"]


def test_events_reconnect_with_last_event_id_after_a_drop(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    asked = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("last-event-id"))
        if len(asked) == 1:  # the stream drops after two events
            body = _sse((1, "status", {"status": "queued"}), (2, "status", {"status": "running"}))
        elif len(asked) == 2:
            raise httpx.ReadError("connection reset")
        else:
            body = _sse((3, "epoch", {"epoch": 1}), (4, "done", {"status": "succeeded"}))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with _mock(handler) as client:
        events = list(client.events("j1"))
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert [e.type for e in events] == ["status", "status", "epoch", "done"]
    assert asked == [None, "2", "2"]


def test_events_skip_the_servers_keep_alive_comments():
    def handler(request: httpx.Request) -> httpx.Response:
        ping = b": ping\n\n"  # what the service sends while a job is quiet
        body = _sse((1, "status", {"status": "running"})) + ping + ping
        body += _sse((2, "done", {"status": "succeeded"}))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with _mock(handler) as client:
        events = list(client.events("j1"))
    assert [(e.id, e.type) for e in events] == [(1, "status"), (2, "done")]


def test_events_give_up_after_repeated_failures(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with _mock(handler) as client, pytest.raises(APIError) as caught:
        list(client.events("j1"))
    assert caught.value.code == "unreachable"


def test_events_of_an_unknown_job_raise_the_api_error():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404, json={"detail": "no fine-tuning job 'x'", "code": "job_not_found"}
        )

    with _mock(handler) as client, pytest.raises(APIError) as caught:
        list(client.events("x"))
    assert (caught.value.status, caught.value.code) == (404, "job_not_found")


def test_async_client_events_and_errors():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("last-event-id"))
        if request.url.path.endswith("/events"):
            body = _sse((5, "epoch", {"epoch": 2}), (6, "done", {"status": "failed"}))
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(401, json={"detail": "needs the key", "code": "unauthorized"})

    async def run():
        async with AsyncClient("http://cs", transport=httpx.MockTransport(handler)) as client:
            events = [e async for e in client.events("j", last_event_id=4)]
            with pytest.raises(APIError) as caught:
                await client.cancel("j")
            return events, caught.value

    events, error = asyncio.run(run())
    assert [e.id for e in events] == [5, 6] and calls[0] == "4"
    assert (error.status, error.code) == (401, "unauthorized")
