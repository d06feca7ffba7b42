"""`ObjectStore` in an S3-compatible bucket (AWS, MinIO, SeaweedFS, Ceph).

The endpoint and the credentials come from the usual AWS settings (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``). A create-only
write is a PUT with ``If-None-Match: *``; a lock is such an object under
``<prefix>/.locks/``, deleted when released, and taken over once older than
``LOCK_STALE_SECONDS`` (its holder died).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from app.errors import writing_to
from app.storage.objects import ObjectExists, ObjectMissing, ObjectStore, check_key

log = logging.getLogger("convserve.storage")

LOCKS_DIR = ".locks"
# A lock is held while a model's first version or a version's OpenVINO IR is built (a
# minute or two for ResNet-50 on a small machine); older than this, its holder died.
LOCK_STALE_SECONDS = 600.0
LOCK_POLL_SECONDS = 0.5

# S3 error codes: an object or bucket that is not there, and a conditional write refused.
MISSING = ("404", "NoSuchKey", "NoSuchBucket", "NotFound")
CONFLICT = ("412", "PreconditionFailed", "ConditionalRequestConflict")


def error_code(exc: Exception) -> str:
    """The S3 error code of a botocore ``ClientError`` ("" for anything else)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` as (bucket, prefix without slashes at either end)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"a storage URL is s3://bucket[/prefix], not {url!r}")
    return parsed.netloc, parsed.path.strip("/")


def s3_client() -> Any:
    import boto3

    return boto3.client("s3")


class S3Objects(ObjectStore):
    """Objects under ``prefix`` in ``bucket``; the bucket is created if the server has
    none by that name (a fresh self-hosted server)."""

    def __init__(
        self, bucket: str, prefix: str = "", client: Any = None, where: str = "the storage"
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.s3 = client if client is not None else s3_client()
        self.where = where
        self._ensure_bucket()

    @classmethod
    def from_url(cls, url: str, client: Any = None, where: str = "the storage") -> S3Objects:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, client, where)

    def child(self, sub: str, where: str | None = None) -> S3Objects:
        """The same bucket under ``<prefix>/<sub>``, sharing this client."""
        child = object.__new__(S3Objects)
        child.bucket, child.s3 = self.bucket, self.s3
        child.prefix = self.key(sub)
        child.where = where or self.where
        return child

    def _ensure_bucket(self) -> None:
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) not in MISSING:
                raise
            with contextlib.suppress(Exception):
                self.s3.create_bucket(Bucket=self.bucket)

    def key(self, *parts: str | int) -> str:
        """The bucket key of ``parts`` under this store's prefix."""
        return "/".join([p for p in (self.prefix,) if p] + [str(p) for p in parts])

    def list_keys(self, prefix: str, delimiter: str | None = None) -> tuple[list[str], list[str]]:
        """Bucket keys and common prefixes under the bucket key ``prefix`` (every page)."""
        keys: list[str] = []
        prefixes: list[str] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        for page in self.s3.get_paginator("list_objects_v2").paginate(**args):
            keys += [o["Key"] for o in page.get("Contents", [])]
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return keys, prefixes

    def put(self, bucket_key: str, body: bytes, **conditions: str) -> str:
        """PUT one object (with S3 conditions, e.g. ``IfMatch``); its new ETag."""
        with writing_to(self.where):
            return str(
                self.s3.put_object(Bucket=self.bucket, Key=bucket_key, Body=body, **conditions)[
                    "ETag"
                ]
            )

    # -- ObjectStore ----------------------------------------------------------------------

    def read(self, key: str) -> bytes:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self.key(check_key(key)))
        except Exception as exc:
            if error_code(exc) in MISSING:
                raise ObjectMissing(key) from None
            raise
        data: bytes = response["Body"].read()
        return data

    def write(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        conditions = {"IfNoneMatch": "*"} if create_only else {}
        try:
            self.put(self.key(check_key(key)), data, **conditions)
        except Exception as exc:
            if create_only and error_code(exc) in CONFLICT:
                raise ObjectExists(key) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self.key(check_key(key)))
        except Exception as exc:
            if error_code(exc) in MISSING:
                return False
            raise
        return True

    def keys(self, prefix: str) -> list[str]:
        base = self.key("")
        found, _ = self.list_keys(base + prefix)
        return sorted(k[len(base) :] for k in found)

    def children(self, prefix: str) -> list[str]:
        base = self.key("") + prefix
        keys, prefixes = self.list_keys(base, "/")
        names = [p[len(base) :].rstrip("/") for p in prefixes] + [k[len(base) :] for k in keys]
        return sorted(n for n in names if n and not n.startswith("."))

    def delete(self, key: str) -> None:
        with writing_to(self.where):
            self.s3.delete_object(Bucket=self.bucket, Key=self.key(check_key(key)))

    def delete_keys(self, bucket_keys: list[str]) -> None:
        """Delete bucket keys, a thousand per request."""
        with writing_to(self.where):
            for i in range(0, len(bucket_keys), 1000):
                self.s3.delete_objects(
                    Bucket=self.bucket,
                    Delete={
                        "Objects": [{"Key": k} for k in bucket_keys[i : i + 1000]],
                        "Quiet": True,
                    },
                )

    def delete_prefix(self, prefix: str) -> None:
        found, _ = self.list_keys(self.key("") + prefix)
        self.delete_keys(found)

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the lock object ``<prefix>/.locks/<key>`` (a create-only write, deleted
        after); one older than ``LOCK_STALE_SECONDS`` is taken over."""
        lock = self.key(LOCKS_DIR, check_key(key))
        while True:
            try:
                self.put(lock, f"{socket.gethostname()}:{os.getpid()}".encode(), IfNoneMatch="*")
                break
            except Exception as exc:
                if error_code(exc) not in CONFLICT:
                    raise
            try:
                held = self.s3.head_object(Bucket=self.bucket, Key=lock)
            except Exception as exc:
                if error_code(exc) in MISSING:
                    continue  # released meanwhile
                raise
            age = datetime.datetime.now(datetime.UTC) - held["LastModified"]
            if age.total_seconds() > LOCK_STALE_SECONDS:
                log.warning("taking over the lock %s, held for %s", key, age)
                self.s3.delete_object(Bucket=self.bucket, Key=lock)
            else:
                time.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            self.s3.delete_object(Bucket=self.bucket, Key=lock)
