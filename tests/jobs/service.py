"""The real service as a subprocess (uvicorn on a free loopback port), for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"service-{self.port}.log"
        self.env = {
            **os.environ,
            "CONVSERVE_MODELS_DIR": str(tmp_path / "models"),
            "CONVSERVE_DATA_DIR": str(tmp_path / "var"),
            "CONVSERVE_SERVED_MODELS": "toy",
            "CONVSERVE_DEFAULT_MODEL": "toy",
            "CONVSERVE_PRETRAINED": "none",
            "CONVSERVE_REGISTRY_POLL_SECONDS": "1",
            # No drain when a test stops it (tests/jobs/test_shutdown.py sets one).
            "CONVSERVE_SHUTDOWN_DRAIN_SECONDS": "0",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> Service:
        with open(self.log, "ab") as log:
            # Its own process group, so a test can kill the service and its job processes
            # together, as a crashed container would be.
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"service not ready:\n{self.log.read_text()[-3000:]}")

    def client(self) -> httpx.Client:
        """An HTTP client of the service, with its key when it has one."""
        key = self.env.get("CONVSERVE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def kill_group(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def wait_for(client: httpx.Client, job_id: str, predicate, timeout: float = 300) -> dict:
    end = time.time() + timeout
    job: dict = {}
    while time.time() < end:
        job = client.get(f"/finetune/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job never reached the state; last seen: {job}")


def dataset_zip(tmp_path: Path, per_class: int) -> bytes:
    """A zipped toy dataset (generated 32x32 images), built once per size."""
    from tests.helpers import make_dataset, zip_directory

    folder = tmp_path / f"upload-{per_class}"
    if not folder.exists():
        make_dataset(folder, per_class=per_class, size=32)
    return zip_directory(folder)


def upload_job(client: httpx.Client, tmp_path: Path, per_class: int = 10, **fields) -> str:
    """POST /finetune with a toy dataset and these form fields; the new job's id. No
    refit unless asked for: these jobs test the service around training (the refit of
    small uploads has its own tests in tests/training/test_trainer.py)."""
    fields.setdefault("refit", "off")
    r = client.post(
        "/finetune",
        files={"dataset": ("d.zip", dataset_zip(tmp_path, per_class))},
        data={k: str(v) for k, v in fields.items()},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])
