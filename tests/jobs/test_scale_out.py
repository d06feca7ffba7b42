"""Several API processes and training workers on real Redis (the job queue), PostgreSQL (the
job store) and an S3 server (SeaweedFS: the model registry, and the jobs' datasets and
resume state), each process with a model cache and a data folder of its own, as on
separate hosts: a worker killed mid-job, Redis restarted mid-job, replicas following each
other's activations."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from app.jobs.store import JobStore
from app.storage.s3 import parse_s3_url
from app.storage.s3registry import S3Registry
from tests.helpers import (
    SIGNS_DIR,
    image_bytes,
    make_dataset,
    pattern_image,
    write_toy_version,
    zip_directory,
)
from tests.jobs.service import ROOT, Service, upload_job, wait_for
from tests.servers import RedisServer, empty_job_store, new_s3_place, start_redis

pytestmark = [pytest.mark.services, pytest.mark.slow]

PNG = image_bytes(pattern_image("checks", 40), "PNG")
FINAL = ("succeeded", "failed", "cancelled")
LEASE_SECONDS = 4
POLL_SECONDS = 1


def _env_jobs_url(registry: S3Registry) -> str:
    return registry.url.rsplit("/", 1)[0] + "/jobs"


def _env(database_url: str, broker_url: str, registry_url: str) -> dict[str, str]:
    return {
        "CONVSERVE_DATABASE_URL": database_url,
        "CONVSERVE_BROKER_URL": broker_url,
        "CONVSERVE_REGISTRY_URL": registry_url,
        "CONVSERVE_JOB_FILES_URL": registry_url.rsplit("/", 1)[0] + "/jobs",
        "CONVSERVE_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
        "CONVSERVE_REGISTRY_POLL_SECONDS": str(POLL_SECONDS),
    }


class Worker:
    """``python -m app worker`` in its own process group (killing the group is losing the
    host: the worker and its job process)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], index: int) -> None:
        self.log = tmp_path / f"worker-{index}.log"
        self.env = {
            **os.environ,
            "CONVSERVE_MODELS_DIR": str(tmp_path / f"cache-worker-{index}"),
            "CONVSERVE_DATA_DIR": str(tmp_path / f"var-worker-{index}"),
            "CONVSERVE_PRETRAINED": "none",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "worker"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill_host(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


class Predictions:
    """Predictions through every API process, one after another, for as long as it runs."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.sent = 0
        self.failures: list[str] = []
        self.versions: dict[str, set[int]] = {u: set() for u in urls}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                for url in self.urls:
                    self.sent += 1
                    try:
                        r = client.post(f"{url}/predict", files={"file": ("a.png", PNG)})
                        if r.status_code != 200:
                            self.failures.append(f"{url}: {r.status_code} {r.text[:200]}")
                        else:
                            self.versions[url].add(int(r.json()["version"]))
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{url}: {exc!r}")
                time.sleep(0.05)

    def __enter__(self) -> Predictions:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(60)


def _upload_signs(client: httpx.Client, tmp_path: Path, per_class: int, **fields: Any) -> str:
    """POST /finetune with a small SIGNS archive (``per_class`` photos of each hand sign
    from ../shared); generated images where the photos are missing. No refit unless asked
    for, as `upload_job`."""
    fields.setdefault("refit", "off")
    if not SIGNS_DIR.is_dir():
        return upload_job(client, tmp_path, per_class=per_class, **fields)
    subset = tmp_path / f"signs-{per_class}"
    if not subset.exists():
        for folder in sorted(p for p in SIGNS_DIR.iterdir() if p.is_dir()):
            (subset / folder.name).mkdir(parents=True)
            for photo in sorted(folder.iterdir())[:per_class]:
                shutil.copy(photo, subset / folder.name / photo.name)
    r = client.post(
        "/finetune",
        files={"dataset": ("signs.zip", zip_directory(subset))},
        data={k: str(v) for k, v in fields.items()},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


@dataclass
class Cluster:
    apis: list[Service]
    workers: list[Worker]
    store: JobStore
    redis: RedisServer
    registry: S3Registry
    folder: Path


def _active_version(url: str) -> int:
    return int(httpx.get(f"{url}/models/toy", timeout=10).json()["active_version"])


def _until(predicate: Any, timeout: float, what: str) -> float:
    """Wait for ``predicate``; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, postgres_url: str):
    """Two API processes and two workers on Redis, PostgreSQL and S3, shared by this
    module's tests (starting them takes about 17 s): each test counts versions from where
    the one before left them."""
    folder = tmp_path_factory.mktemp("cluster")
    redis = start_redis(folder / "redis")
    database = empty_job_store(postgres_url)
    registry_url = new_s3_place()
    seed = S3Registry(registry_url, folder / "cache-seed")
    write_toy_version(seed, "toy", ["circle", "square"], seed=0)
    seed.set_active("toy", 1)
    env = _env(database, redis.url, registry_url)
    apis = [
        Service(
            folder,
            **env,
            CONVSERVE_MODELS_DIR=str(folder / f"cache-api-{i}"),
            CONVSERVE_DATA_DIR=str(folder / f"var-api-{i}"),
        )
        for i in (1, 2)
    ]
    workers: list[Worker] = []
    try:
        for api in apis:
            api.start()
        workers = [Worker(folder, env, 1), Worker(folder, env, 2)]
        yield Cluster(apis, workers, JobStore(database), redis, seed, folder)
    finally:
        for w in workers:
            w.stop()
        for api in apis:
            api.stop()
        redis.stop()


def test_api_replicas_never_train_and_a_job_cancels_on_any_worker(cluster, tmp_path):
    apis, workers, registry = cluster.apis, cluster.workers, cluster.registry
    before = registry.versions("toy")
    with apis[1].client() as c:
        job_id = upload_job(
            c, tmp_path, per_class=30, epochs=200, fine_tune_epochs=0,
            early_stopping_patience=0, image_size=64, batch_size=4,
        )  # fmt: skip
        wait_for(c, job_id, lambda j: (j.get("progress") or {}).get("epoch", 0) >= 1)
        owner = cluster.store.get(job_id)["owner"]
        assert owner.startswith("worker@"), owner
        assert any(owner.endswith(f":{w.proc.pid}") for w in workers)
        # Cancelled through the other API process.
        assert httpx.delete(f"{apis[0].url}/finetune/{job_id}").status_code == 200
        job = wait_for(c, job_id, lambda j: j["status"] in FINAL, timeout=30)
        assert job["status"] == "cancelled"
    assert registry.versions("toy") == before


def test_a_redis_restart_mid_job_neither_loses_the_job_nor_runs_it_twice(cluster, tmp_path):
    registry, redis = cluster.registry, cluster.redis
    before = registry.versions("toy")
    with cluster.apis[0].client() as c:
        job_id = upload_job(
            c, tmp_path, per_class=30, epochs=4, fine_tune_epochs=0,
            early_stopping_patience=0, image_size=64, batch_size=4,
        )  # fmt: skip
        wait_for(c, job_id, lambda j: (j.get("progress") or {}).get("epoch", 0) >= 1)
        redis.stop()
        time.sleep(2)
        redis.start()
        # A second job sent after the restart goes through the same queue.
        second = upload_job(
            c, tmp_path, per_class=10, epochs=1, fine_tune_epochs=0,
            early_stopping_patience=0, image_size=32, batch_size=8,
        )  # fmt: skip
        job = wait_for(c, job_id, lambda j: j["status"] in FINAL)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert [h["epoch"] for h in job["history"]] == [1, 2, 3, 4]
        assert wait_for(c, second, lambda j: j["status"] in FINAL)["status"] == "succeeded"
    new = registry.versions("toy")[len(before) :]
    assert len(new) == 2 and registry.versions("toy") == before + new
    sources = [registry.metadata("toy", v).get("source") for v in new]
    assert sorted(sources) == sorted([job_id, second])


def test_a_killed_worker_s_job_resumes_on_the_other_and_replicas_follow(cluster, tmp_path):
    (api1, api2), workers, store, registry = (
        cluster.apis,
        cluster.workers,
        cluster.store,
        cluster.registry,
    )
    before = registry.versions("toy")
    old = _active_version(api1.url)
    with Predictions([api1.url, api2.url]) as predictions, api1.client() as c:
        job_id = _upload_signs(
            c, tmp_path, per_class=12, epochs=6, fine_tune_epochs=0,
            early_stopping_patience=0, image_size=64, batch_size=8,
        )  # fmt: skip
        wait_for(c, job_id, lambda j: (j.get("progress") or {}).get("epoch", 0) >= 2)
        running = store.get(job_id)
        owner, epochs_done = running["owner"], running["progress"]["epoch"]
        victim = next(w for w in workers if owner.endswith(f":{w.proc.pid}"))
        victim.kill_host()
        killed_at, killed_wall = time.monotonic(), time.time()
        resumed = _until(
            lambda: (store.get(job_id) or {}).get("owner") not in (None, owner),
            LEASE_SECONDS * 4 + 30,
            "another worker takes the job over",
        )
        job = wait_for(c, job_id, lambda j: j["status"] in FINAL)
        assert job["status"] == "succeeded", job
        done_at = time.monotonic()
        # Resumed from its last completed epoch, on another host's disk: every epoch once,
        # two attempts, and the epochs done before the kill were not run again.
        assert [h["epoch"] for h in job["history"]] == [1, 2, 3, 4, 5, 6]
        assert job["attempts"] == 2
        assert epochs_done >= 2
        assert all(h["ended_at"] < killed_wall for h in job["history"][:epochs_done])
        # The upload left the API's disk for the bucket, and left the bucket with the job.
        assert not (cluster.folder / "var-api-1" / "jobs" / job_id / "dataset").exists()
        bucket, prefix = parse_s3_url(_env_jobs_url(registry))
        _until(
            lambda: (
                not boto3.client("s3")
                .list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{job_id}/")
                .get("Contents")
            ),
            10,
            "the job's files leave the bucket",
        )
        # Exactly one new version.
        new = before[-1] + 1
        assert registry.versions("toy") == [*before, new]
        # Each replica downloads it and warms it up after the poll that sees the pointer
        # move; its OpenVINO IR is built by one of them and fetched by the other (12-15 s
        # measured on this machine before it was built once).
        followed = [
            _until(lambda u=api.url: _active_version(u) == new, 90, api.url) for api in (api1, api2)
        ]
        ir = registry._key("toy", new, "openvino/model.xml")
        assert boto3.client("s3").head_object(Bucket=bucket, Key=ir)["ContentLength"] > 0
        assert api2.client().post(f"/models/toy/versions/{old}/activate").status_code == 200
        back = _until(lambda: _active_version(api1.url) == old, POLL_SECONDS * 5 + 10, "api1")
        answer = httpx.post(f"{api1.url}/predict", files={"file": ("a.png", PNG)}).json()
        assert answer["version"] == old
    assert predictions.failures == [], predictions.failures[:5]
    assert predictions.sent > 20
    assert all(new in seen for seen in predictions.versions.values()), predictions.versions
    print(
        f"\nlease expiry to resume: {resumed:.1f} s (lease {LEASE_SECONDS} s);"
        f" kill to success: {done_at - killed_at:.1f} s;"
        f" new version served by the replicas after {max(followed):.1f} s;"
        f" activation on api2 followed by api1 after {back:.1f} s;"
        f" predictions: {predictions.sent} sent, {len(predictions.failures)} failed"
    )


def test_two_activations_at_once_on_two_replicas_one_wins_the_other_gets_409(cluster):
    api1, api2 = cluster.apis
    registry = cluster.registry
    # Two versions no replica has loaded yet: loading takes each replica a while, so both
    # requests are under way before either writes the pointer.
    first = write_toy_version(registry, "toy", ["circle", "square"], seed=11)
    second = write_toy_version(registry, "toy", ["circle", "square"], seed=12)
    barrier = threading.Barrier(2)
    answers: dict[int, httpx.Response] = {}

    def activate(url: str, version: int) -> None:
        barrier.wait()
        answers[version] = httpx.post(f"{url}/models/toy/versions/{version}/activate", timeout=120)

    threads = [
        threading.Thread(target=activate, args=(api1.url, first)),
        threading.Thread(target=activate, args=(api2.url, second)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    codes = sorted(r.status_code for r in answers.values())
    assert codes == [200, 409], {v: r.text[:200] for v, r in answers.items()}
    winner = next(v for v, r in answers.items() if r.status_code == 200)
    loser = next(r for r in answers.values() if r.status_code == 409)
    assert loser.json()["code"] == "activation_conflict"
    assert registry.pointer("toy") == winner
    # The replica that lost follows the winner, as every replica does.
    for api in (api1, api2):
        _until(lambda u=api.url: _active_version(u) == winner, POLL_SECONDS * 5 + 30, api.url)


def test_a_dataset_made_on_one_replica_is_trained_by_a_worker_and_seen_by_the_other(
    cluster, tmp_path
):
    api1, api2 = cluster.apis
    folder = make_dataset(tmp_path / "shapes", per_class=6, size=32)
    with api1.client() as one, api2.client() as two:
        r = one.post(
            "/datasets",
            data={"name": "shared"},
            files={"archive": ("d.zip", zip_directory(folder))},
        )
        assert r.status_code == 201, r.text
        # Two adds at once, one through each replica: both land in the bucket.
        answers: list[httpx.Response] = []

        def add(client: httpx.Client, label: str, kind: str) -> None:
            files = [
                ("file", (f"{kind}{i}.png", image_bytes(pattern_image(kind, 32, 40 + i))))
                for i in range(5)
            ]
            answers.append(
                client.post("/datasets/shared/images", params={"label": label}, files=files)
            )

        threads = [
            threading.Thread(target=add, args=(one, "hstripes", "hstripes")),
            threading.Thread(target=add, args=(two, "dark", "dark")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(a.status_code for a in answers) == [201, 201], [a.text for a in answers]
        shown = two.get("/datasets/shared").json()
        assert shown["latest_version"] == 3
        assert shown["classes"] == {"dark": 5, "hstripes": 11, "vstripes": 6}

        # Trained by a worker (another process and data folder; the API processes never
        # train with a broker) from the bucket's copy.
        r = two.post(
            "/finetune",
            data={
                "dataset_name": "shared",
                "promote": "false",
                "epochs": "1",
                "fine_tune_epochs": "0",
                "image_size": "32",
                "batch_size": "8",
            },
        )
        assert r.status_code == 202, r.text
        job = wait_for(one, r.json()["job_id"], lambda j: j["status"] in FINAL)
        assert job["status"] == "succeeded", job
        version = job["result"]["version"]
        details = {v["version"]: v for v in one.get("/models/toy").json()["version_details"]}
        record = details[version]["dataset"]
        assert (record["name"], record["version"]) == ("shared", 3)
        assert record["per_class"] == {"dark": 5, "hstripes": 11, "vstripes": 6}


def test_a_job_rolled_out_as_a_shadow_is_followed_by_both_replicas_and_summed(cluster, tmp_path):
    """``promote=shadow``: the worker starts the rollout in the shared database; both API
    replicas follow it (the candidate runs beside each request), the figures are summed
    across them, and a promote on one is followed by the other."""
    api1, api2 = cluster.apis
    with api1.client() as one, api2.client() as two:
        baseline = one.get("/models/toy").json()["active_version"]
        job_id = upload_job(
            one,
            tmp_path,
            per_class=8,
            epochs=1,
            fine_tune_epochs=0,
            image_size=32,
            batch_size=8,
            promote="shadow",
            rollout_share="1",
        )
        job = wait_for(one, job_id, lambda j: j["status"] in FINAL)
        assert job["status"] == "succeeded", job
        candidate = job["result"]["version"]
        assert job["result"]["rollout"]["mode"] == "shadow" and not job["result"]["promoted"]
        deadline = time.time() + 30
        while two.get("/models/toy/rollout").json().get("status") != "running":
            assert time.time() < deadline
            time.sleep(0.5)
        time.sleep(2 * POLL_SECONDS + 1)  # both replicas follow it (they sync every second)
        for client in (one, two):
            for _ in range(10):
                r = client.post("/predict", files={"file": ("a.png", PNG)})
                assert r.status_code == 200 and r.json()["version"] == baseline
        deadline = time.time() + 30
        while True:
            shown = two.get("/models/toy/rollout").json()
            figures = shown["figures"][str(candidate)]
            if shown["replicas"] == 2 and figures["compared"] == 20:
                break
            assert time.time() < deadline, shown
            time.sleep(0.5)
        assert figures["requests"] == 20 and shown["figures"][str(baseline)]["requests"] == 20

        assert one.post("/models/toy/rollout/promote").json()["status"] == "promoted"
        deadline = time.time() + 30
        while two.post("/predict", files={"file": ("a.png", PNG)}).json()["version"] != candidate:
            assert time.time() < deadline
            time.sleep(0.5)
