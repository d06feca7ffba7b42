"""SIGTERM, a full disk and a read-only registry, against the real service process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.storage.registry import ModelRegistry
from tests.helpers import image_bytes, pattern_image
from tests.jobs.service import Service, dataset_zip, upload_job, wait_for

PNG = image_bytes(pattern_image("checks", 40), "PNG")
FINAL = ("succeeded", "failed", "cancelled")
EPOCHS = 40


def _job_row(tmp_path: Path, job_id: str) -> tuple[str, int]:
    db = sqlite3.connect(tmp_path / "var" / "jobs.sqlite")
    try:
        row = db.execute("SELECT status, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return row[0], row[1]


def _job_pid(tmp_path: Path, job_id: str) -> int | None:
    db = sqlite3.connect(tmp_path / "var" / "jobs.sqlite")
    try:
        return db.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    finally:
        db.close()


def _wait_until_ended(pid: int | None, timeout: float = 60) -> None:
    """Until process ``pid`` has exited (and been reaped by its parent, the service)."""
    end = time.time() + timeout
    while pid is not None and Path(f"/proc/{pid}").exists() and time.time() < end:
        time.sleep(0.05)


class Predictions:
    """Clients sending /predict in a loop; counts how each request ended. A client that
    is told the service is shutting down stops, as a load balancer or a client honouring
    the 503 would: a connection opened at the very moment the port closes can be reset
    before its request is read by any server, which no server can answer."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.outcomes: Counter[str] = Counter()
        self.lost: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Predictions:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _record(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/predict", files={"file": ("a.png", PNG)})
                except httpx.ConnectError:
                    self._record("refused")  # the port is closed: never accepted
                    time.sleep(0.05)
                    continue
                except httpx.HTTPError as exc:  # accepted, then dropped: what must not happen
                    with self._lock:
                        self.lost.append(repr(exc))
                    continue
                self._record(str(r.status_code))
                if r.status_code == 503:
                    assert r.json()["code"] == "shutting_down" and r.headers["retry-after"]
                    return


def _slow_upload(url: str, body: bytes, headers: dict[str, str], result: dict) -> None:
    """Sends a /finetune upload in two halves a few seconds apart: it is in flight when the
    service is told to stop."""

    def chunks():
        yield body[: len(body) // 2]
        time.sleep(3.0)
        yield body[len(body) // 2 :]

    try:
        r = httpx.post(f"{url}/finetune", content=chunks(), headers=headers, timeout=60)
        result["status"], result["body"] = r.status_code, r.json()
    except httpx.HTTPError as exc:
        result["error"] = repr(exc)


@pytest.mark.slow
def test_sigterm_drains_answers_what_it_accepted_and_the_job_resumes(tmp_path, registry):
    service = Service(tmp_path, CONVSERVE_SHUTDOWN_DRAIN_SECONDS="2")
    service.start()
    try:
        with service.client() as c:
            # Epochs enough that the job is still training when the service stops it, 2 s
            # of drain after its second epoch, on a machine several times faster than this
            # one (half a second per epoch here).
            job_id = upload_job(
                c,
                tmp_path,
                30,
                epochs=EPOCHS,
                fine_tune_epochs=0,
                early_stopping_patience=0,
                image_size=64,
                batch_size=4,
            )
            job = wait_for(c, job_id, lambda j: len(j.get("history") or []) >= 2)
            before = job["history"]

            upload = c.build_request(
                "POST",
                "/finetune",
                files={"dataset": ("d.zip", dataset_zip(tmp_path, 6))},
                data={"epochs": "1", "fine_tune_epochs": "0", "image_size": "32"},
            )
            headers = {"content-type": upload.headers["content-type"]}
            late: dict = {}
            uploader = threading.Thread(
                target=_slow_upload, args=(service.url, upload.read(), headers, late)
            )
            with Predictions(service.url) as load:
                time.sleep(1.0)
                uploader.start()
                time.sleep(0.5)  # the upload's first half is in
                assert service.proc is not None
                service.proc.send_signal(signal.SIGTERM)  # to the service only, as Docker does
                time.sleep(0.3)
                # Draining: new requests are refused with a reason, liveness still answers.
                with httpx.Client(base_url=service.url, timeout=10) as fresh:
                    ready = fresh.get("/readyz")
                    assert ready.status_code == 503 and ready.json()["code"] == "shutting_down"
                    r = fresh.post("/predict", files={"file": ("a.png", PNG)})
                    assert r.status_code == 503 and r.headers["retry-after"] == "5"
                    assert r.json()["code"] == "shutting_down"
                    assert fresh.get("/healthz").status_code == 200
                uploader.join(timeout=60)
                service.proc.wait(timeout=60)
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert service.proc.returncode in (0, -signal.SIGTERM)
        assert load.lost == [], f"accepted requests without an answer: {load.lost[:3]}"
        assert load.outcomes["200"] > 0 and load.outcomes["503"] > 0, load.outcomes
        # The upload that was in flight was answered and its job kept.
        assert late.get("status") == 202, late
        late_id = late["body"]["job_id"]
        assert _job_row(tmp_path, late_id) == ("queued", 0)
        # The running job was stopped, queued again without counting an attempt.
        assert _job_row(tmp_path, job_id) == ("queued", 0)
        models = tmp_path / "models" / "toy"
        assert not [p.name for p in models.iterdir() if p.name.startswith(".tmp-")]
        assert (tmp_path / "var" / "jobs" / job_id / "workspace").is_dir()
        log = service.log.read_text()
        assert "Traceback" not in log, log[-3000:]

        service.start()
        with service.client() as c:
            job = wait_for(c, job_id, lambda j: j["status"] in FINAL)
            assert job["status"] == "succeeded" and job["attempts"] == 1, job
            assert [h["epoch"] for h in job["history"]] == list(range(1, EPOCHS + 1))
            # The epochs done before the stop were not trained again.
            done = len(before)
            assert [h["ended_at"] for h in job["history"][:done]] == [h["ended_at"] for h in before]
            assert wait_for(c, late_id, lambda j: j["status"] in FINAL)["status"] == "succeeded"
        assert ModelRegistry(tmp_path / "models").versions("toy") == [1, 2, 3]
    finally:
        service.stop()


@pytest.mark.slow
def test_a_job_whose_version_is_written_as_the_service_stops_is_promoted_at_the_next_start(
    tmp_path, registry
):
    """The job's process wrote the new version and ended, and the service stops while it
    promotes it (loads it to serve): the job is neither failed nor trained again."""
    service = Service(tmp_path)
    service.start()
    try:
        with service.client() as c:
            job_id = upload_job(
                c, tmp_path, 10, epochs=1, fine_tune_epochs=0, image_size=32, batch_size=4
            )
            # The version is written: the process records the result just before it ends.
            wait_for(c, job_id, lambda j: j.get("result") is not None or j["status"] in FINAL)
            _wait_until_ended(_job_pid(tmp_path, job_id))
        assert service.proc is not None
        service.proc.send_signal(signal.SIGTERM)
        service.proc.wait(timeout=60)
        # Promoted before the stop, or queued to be promoted at the next start; either way
        # no attempt was spent.
        assert _job_row(tmp_path, job_id) in (("queued", 0), ("succeeded", 1))
        assert "Traceback" not in service.log.read_text()

        service.start()
        with service.client() as c:
            job = wait_for(c, job_id, lambda j: j["status"] in FINAL)
            assert job["status"] == "succeeded" and job["attempts"] == 1, job
            assert job["result"]["version"] == 2 and job["result"]["promoted"] is True, job
            assert c.get("/models/toy").json()["active_version"] == 2
            r = c.post("/predict", params={"model": "toy"}, files={"file": ("a.png", PNG)})
            assert r.status_code == 200 and r.json()["version"] == 2, r.text
        # Trained once: the restart found the version and only promoted it.
        assert ModelRegistry(tmp_path / "models").versions("toy") == [1, 2]
    finally:
        service.stop()


@pytest.fixture
def small_models_disk(tmp_path):
    """The registry on a tmpfs with room for the toy model and little more."""
    staging = ModelRegistry(tmp_path / "staging")
    from tests.helpers import mount_tmpfs, write_toy_version

    write_toy_version(staging, "toy", ["circle", "square"], seed=0)
    staging.set_active("toy", 1)
    used = sum(p.stat().st_size for p in (tmp_path / "staging").rglob("*") if p.is_file())
    models = tmp_path / "models"
    mount_tmpfs(models, used + 256 * 1024)
    try:
        subprocess.run(["cp", "-a", f"{tmp_path / 'staging'}/.", str(models)], check=True)
        yield models
    finally:
        subprocess.run(["umount", "-l", str(models)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["full", "read_only"])
def test_a_version_that_cannot_be_written_fails_the_job_and_serving_goes_on(
    tmp_path, small_models_disk, problem
):
    service = Service(tmp_path).start()
    try:
        if problem == "read_only":
            subprocess.run(["mount", "-o", "remount,ro", str(small_models_disk)], check=True)
        expected = {"full": "storage_full", "read_only": "storage_not_writable"}[problem]
        with service.client() as c:
            job_id = upload_job(
                c, tmp_path, 8, epochs=1, fine_tune_epochs=0, image_size=32, batch_size=8
            )
            job = wait_for(c, job_id, lambda j: j["status"] in FINAL)
            assert job["status"] == "failed" and job["error"]["code"] == expected, job
            assert "model registry" in job["error"]["detail"]
            assert c.post("/predict", files={"file": ("a.png", PNG)}).status_code == 200
            if problem == "read_only":
                r = c.post("/models/toy/versions/1/activate")
                assert r.status_code == 503 and r.json()["code"] == expected, r.text
        leftovers = sorted(p.name for p in (small_models_disk / "toy").iterdir())
        assert leftovers == ["1", "active"] or leftovers == [".lock", "1", "active"], leftovers
        assert not (tmp_path / "var" / "jobs" / job["job_id"]).exists()
    finally:
        service.stop()
