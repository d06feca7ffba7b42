"""The job event log and GET /finetune/{id}/events (Server-Sent Events).

Job processes are off: the tests move a job through its life by writing to the store, as
the job process and the supervisor do."""

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.jobs.store import CANCELLED, FAILED, QUEUED, SUCCEEDED, JobStore, job_events
from app.main import create_app


def _new_job(store: JobStore) -> str:
    return store.create("toy", {"epochs": 2}, True, [], {"class_names": ["a", "b"]})["id"]


def _run_to_the_end(store: JobStore, job_id: str, pause: float = 0.0) -> None:
    store.claim_next()
    history = []
    for epoch in (1, 2):
        time.sleep(pause)
        progress = {"phase": "head", "epoch": epoch - 1, "total_epochs": 2, "fraction": 0.25}
        store.update(job_id, progress=progress)
        history.append({"epoch": epoch, "phase": "head", "loss": 1.0 / epoch})
        store.update(job_id, history=history)
    store.finish(job_id, SUCCEEDED, result={"version": 2, "metrics": {"accuracy": 0.9}})


def _parse(stream_text: str) -> list[dict]:
    """Events of a text/event-stream body, as {id, event, data} dicts (comments dropped)."""
    events = []
    for block in stream_text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if fields:
            events.append({**fields, "data": json.loads(fields["data"])})
    return events


@pytest.fixture
def app_client(registry, settings_for):
    with TestClient(create_app(settings_for(run_jobs=False, api_key="k"))) as c:
        c.headers["Authorization"] = "Bearer k"  # reads need the key once one is set
        yield c


def _store(settings_for) -> JobStore:
    return JobStore(settings_for().data_dir / "jobs.sqlite")


def test_the_store_logs_every_change_in_order(settings_for):
    store = _store(settings_for)
    job_id = _new_job(store)
    _run_to_the_end(store, job_id)
    events = store.events(job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [(e.type, e.data.get("status") or e.data.get("epoch")) for e in events]
    assert kinds == [
        ("status", QUEUED),
        ("status", "running"),
        ("progress", 0),
        ("epoch", 1),
        ("progress", 1),
        ("epoch", 2),
        ("status", SUCCEEDED),
        ("done", SUCCEEDED),
    ]
    assert events[-1].data["result"]["version"] == 2
    # Writing the same history again (a resumed job) announces no epoch twice.
    store.update(job_id, history=[{"epoch": 1}, {"epoch": 2}])
    assert len(store.events(job_id)) == len(events)
    assert [e.type for e in store.events(job_id, after=6)] == ["status", "done"]


def test_cancel_and_failure_end_with_done(settings_for):
    store = _store(settings_for)
    queued = _new_job(store)
    store.request_cancel(queued)
    assert [(e.type, e.data["status"]) for e in store.events(queued)][-2:] == [
        ("status", CANCELLED),
        ("done", CANCELLED),
    ]
    failing = _new_job(store)
    store.claim_next()
    store.finish(failing, FAILED, error="training failed: boom", error_code="training_failed")
    done = store.events(failing)[-1]
    assert done.type == "done" and done.data["error"]["code"] == "training_failed"


def test_jobs_from_before_the_event_log_get_their_events(settings_for):
    store = _store(settings_for)
    job_id = _new_job(store)
    _run_to_the_end(store, job_id)
    with store.engine.begin() as db:
        db.execute(job_events.delete())
    events = JobStore(store.url).events(job_id)
    assert [e.type for e in events] == ["epoch", "epoch", "status", "done"]


def test_stream_of_a_finished_job_replays_everything_then_ends(app_client, settings_for):
    store = _store(settings_for)
    job_id = _new_job(store)
    _run_to_the_end(store, job_id)
    r = app_client.get(f"/finetune/{job_id}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _parse(r.text)
    # A client catching up gets only the latest progress event.
    assert [(int(e["id"]), e["event"]) for e in events] == [
        (1, "status"),
        (2, "status"),
        (4, "epoch"),
        (5, "progress"),
        (6, "epoch"),
        (7, "status"),
        (8, "done"),
    ]
    assert events[-1]["data"]["result"]["metrics"]["accuracy"] == 0.9


def test_last_event_id_resumes_after_it(app_client, settings_for):
    store = _store(settings_for)
    job_id = _new_job(store)
    _run_to_the_end(store, job_id)
    r = app_client.get(f"/finetune/{job_id}/events", headers={"Last-Event-ID": "4"})
    events = _parse(r.text)
    assert [int(e["id"]) for e in events] == [5, 6, 7, 8]
    assert [e["event"] for e in events] == ["progress", "epoch", "status", "done"]


def test_stream_follows_a_running_job_live(app_client, settings_for):
    store = _store(settings_for)
    job_id = _new_job(store)
    worker = threading.Thread(target=_run_to_the_end, args=(store, job_id, 0.6))
    worker.start()
    seen = []
    with app_client.stream("GET", f"/finetune/{job_id}/events") as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                seen.append((line[7:], time.monotonic()))
    worker.join()
    kinds = [k for k, _ in seen]
    assert kinds[0] == "status" and kinds[-1] == "done"
    assert kinds.count("epoch") == 2
    # The epochs arrived while the job ran, not all at the end.
    epoch_times = [t for k, t in seen if k == "epoch"]
    assert epoch_times[1] - epoch_times[0] > 0.3


def test_unknown_job_is_404_and_the_stream_needs_a_read_key(app_client, settings_for):
    r = app_client.get("/finetune/nope/events")
    assert (r.status_code, r.json()["code"]) == (404, "job_not_found")
    store = _store(settings_for)
    job_id = _new_job(store)
    store.request_cancel(job_id)
    # Like GET /finetune/{id}, the stream is a read (a key of any scope); cancel is not.
    assert app_client.get(f"/finetune/{job_id}/events").status_code == 200
    anonymous = {"Authorization": ""}
    r = app_client.get(f"/finetune/{job_id}/events", headers=anonymous)
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    other = _new_job(store)
    assert app_client.delete(f"/finetune/{other}", headers=anonymous).status_code == 401
