"""The model registry on both of its stores: a local folder (the default) and an S3 bucket
on a real S3 server (SeaweedFS, `s3_endpoint`). The same tests run on each."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from app.storage.registry import METADATA_FILE, MODEL_FILE, ModelRegistry, RegistryError
from app.storage.s3 import parse_s3_url
from app.storage.s3registry import S3Registry

BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.services)]


@pytest.fixture(params=BACKENDS)
def open_replica(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ModelRegistry]:
    """Opens the registry as a new replica would: the same store, a cache of its own."""
    counter = iter(range(100))
    if request.param == "local":
        return lambda: ModelRegistry(tmp_path / "models")
    url = request.getfixturevalue("s3_bucket")
    return lambda: S3Registry(url, tmp_path / f"cache-{next(counter)}")


def _save(payload: bytes) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(payload)
        (folder / "heldout.npz").write_bytes(b"held-out " + payload)
        (folder / "openvino").mkdir()
        (folder / "openvino" / "model.xml").write_text("<ir/>")
        (folder / "openvino" / "compiled").mkdir()
        (folder / "openvino" / "compiled" / "blob").write_bytes(b"this host's CPU")

    return save


def test_a_version_written_by_one_replica_is_read_by_another(open_replica) -> None:
    writer, reader = open_replica(), open_replica()
    version = writer.write_version("cats", _save(b"weights-1"), {"classes": ["a", "b"]})
    assert version == 1 and reader.names() == ["cats"] and reader.versions("cats") == [1]
    assert reader.metadata("cats", 1)["classes"] == ["a", "b"]
    assert reader.model_path("cats", 1).read_bytes() == b"weights-1"
    folder = reader.version_dir("cats", 1)
    assert (folder / "heldout.npz").read_bytes() == b"held-out weights-1"
    assert (folder / "openvino" / "model.xml").read_text() == "<ir/>"
    assert reader.exists("cats", 1) and not reader.exists("cats", 2)
    with pytest.raises(RegistryError) as missing:
        reader.metadata("cats", 7)
    assert missing.value.code == "version_not_found"


def test_concurrent_writers_get_distinct_numbers(open_replica) -> None:
    replicas = [open_replica() for _ in range(4)]
    numbers: list[int] = []
    barrier = threading.Barrier(len(replicas))

    def write(registry: ModelRegistry, i: int) -> None:
        barrier.wait()
        numbers.append(registry.write_version("dogs", _save(f"w{i}".encode()), {"i": i}))

    threads = [threading.Thread(target=write, args=(r, i)) for i, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == [1, 2, 3, 4]
    reader = open_replica()
    assert reader.versions("dogs") == [1, 2, 3, 4]
    for v in (1, 2, 3, 4):  # each number holds one writer's files, whole
        i = reader.metadata("dogs", v)["i"]
        assert reader.model_path("dogs", v).read_bytes() == f"w{i}".encode()


def test_activation_is_seen_by_other_replicas_and_deletes_follow(open_replica) -> None:
    one, two = open_replica(), open_replica()
    for i in (1, 2):
        one.write_version("birds", _save(f"w{i}".encode()), {})
    assert two.active_version("birds") == 2  # no pointer: the newest
    one.set_active("birds", 1)
    assert two.pointer("birds") == 1 and two.active_version("birds") == 1
    with pytest.raises(RegistryError) as active:
        two.delete_version("birds", 1)
    assert active.value.code == "version_active" and active.value.status == 409
    two.update_metadata("birds", 2, {"note": "studied"})
    assert one.metadata("birds", 2)["note"] == "studied"
    two.delete_version("birds", 2)
    assert one.versions("birds") == [1]
    two.delete_model("birds")
    assert one.names() == [] and one.versions("birds") == []


def test_two_activations_at_once_one_wins_the_other_gets_409(open_replica) -> None:
    one, two = open_replica(), open_replica()
    assert one.pointer_etag("fish") == ""  # no pointer yet
    for i in (1, 2, 3):
        one.write_version("fish", _save(f"w{i}".encode()), {})
    one.set_active("fish", 1)
    seen = one.pointer_etag("fish")
    assert seen == two.pointer_etag("fish")  # both read the pointer ...
    one.set_active("fish", 2, if_match=seen)  # ... one writes first
    with pytest.raises(RegistryError) as lost:
        two.set_active("fish", 3, if_match=seen)
    assert lost.value.code == "activation_conflict" and lost.value.status == 409
    assert two.pointer("fish") == 2 and one.pointer("fish") == 2


@pytest.mark.services
def test_a_half_written_version_is_invisible_and_host_files_stay_local(s3_bucket, tmp_path) -> None:
    registry = S3Registry(s3_bucket, tmp_path / "cache")
    registry.write_version("owls", _save(b"w1"), {})
    bucket, prefix = parse_s3_url(s3_bucket)
    s3 = boto3.client("s3")
    # A writer that died after its model file, before its metadata.
    s3.put_object(Bucket=bucket, Key=f"{prefix}/owls/2/{MODEL_FILE}", Body=b"half")
    assert registry.versions("owls") == [1]
    keys = {
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/owls/1/")["Contents"]
    }
    assert f"{prefix}/owls/1/{METADATA_FILE}" in keys
    assert f"{prefix}/owls/1/openvino/model.xml" in keys  # the IR is shared ...
    assert not any("compiled" in k for k in keys)  # ... what this CPU compiled is not
    # The next writer does not reuse the dead writer's number.
    assert registry.write_version("owls", _save(b"w3"), {}) == 3


@pytest.mark.services
def test_a_file_built_from_a_version_is_built_by_one_host_and_fetched_by_the_others(
    s3_bucket, tmp_path
) -> None:
    replicas = [S3Registry(s3_bucket, tmp_path / f"host-{i}") for i in range(3)]
    replicas[0].write_version("newts", _save(b"w1"), {})
    # A version without an IR, as written by the job (an older release) or a bootstrap.
    for replica in replicas:
        shutil.rmtree(replica.version_dir("newts", 1) / "openvino")
    boto3.client("s3").delete_object(
        Bucket=parse_s3_url(s3_bucket)[0],
        Key=replicas[0]._key("newts", 1, "openvino/model.xml"),
    )
    builds: list[int] = []
    barrier = threading.Barrier(len(replicas))

    def build_on(index: int) -> None:
        replica = replicas[index]
        folder = replica.version_dir("newts", 1)

        def convert() -> None:
            builds.append(index)
            time.sleep(0.5)  # long enough for the others to be waiting
            (folder / "openvino").mkdir()
            (folder / "openvino" / "model.xml").write_text(f"<ir from={index}/>")

        barrier.wait()
        replica.build_once("newts", 1, "openvino/model.xml", convert)

    threads = [threading.Thread(target=build_on, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(builds) == 1
    texts = {(r.version_dir("newts", 1) / "openvino" / "model.xml").read_text() for r in replicas}
    assert texts == {f"<ir from={builds[0]}/>"}
    # The lock is gone: the next holder gets it at once.
    started = time.monotonic()
    with replicas[1].locked("newts"):
        pass
    assert time.monotonic() - started < 2


@pytest.mark.services
def test_a_lock_left_by_a_dead_host_is_taken_over(s3_bucket, tmp_path, monkeypatch) -> None:
    import app.storage.s3

    registry = S3Registry(s3_bucket, tmp_path / "cache")
    bucket, _ = parse_s3_url(s3_bucket)
    key = registry._key(app.storage.s3.LOCKS_DIR, "moles", "model")
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"dead-host:1")
    monkeypatch.setattr(app.storage.s3, "LOCK_STALE_SECONDS", 1.0)
    with registry.locked("moles"):
        held = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        assert held != b"dead-host:1"
    assert registry.names() == []  # the lock is not a model


def test_an_activation_that_finds_its_version_already_active_is_no_conflict(open_replica):
    one, two = open_replica(), open_replica()
    for i in (1, 2):
        one.write_version("voles", _save(f"w{i}".encode()), {})
    one.set_active("voles", 1)
    seen = one.pointer_etag("voles")
    two.set_active("voles", 2)  # e.g. a replica that loaded it first wrote the pointer
    one.set_active("voles", 2, if_match=seen)  # wanted the same: nothing lost
    assert one.pointer("voles") == two.pointer("voles") == 2
