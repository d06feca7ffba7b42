"""The model registry in S3-compatible object storage, with a local cache.

Used when ``CONVSERVE_REGISTRY_URL`` is ``s3://bucket/prefix``; the endpoint and the
credentials come from the usual AWS settings (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), so any S3 server works (AWS, MinIO,
SeaweedFS, Ceph). Objects::

    <prefix>/<name>/<version>/.claim           the version number, taken (create-only)
    <prefix>/<name>/<version>/model.keras      ... every file of the version ...
    <prefix>/<name>/<version>/metadata.json    written last: a version exists once it does
    <prefix>/<name>/active                     the version being served (one line)
    <prefix>/.locks/<name>/{model,<version>}   held while one host builds what all share

A version is written once: its number is taken with a create-only write of ``.claim``
(``If-None-Match: *``), so two writers never share a number; its files follow and its
``metadata.json`` comes last, so a reader never sees half a version. The active pointer is
replaced with a conditional write (``If-Match`` on the ETag read just before), so of two
activations at once one wins and the other gets 409 ``activation_conflict``. Replicas
follow the pointer by polling it (a GET with ``If-None-Match``: 304 while it is unchanged).

The local folder (``CONVSERVE_MODELS_DIR``) is a cache of the versions this process
serves: a version is downloaded once, into a hidden folder renamed into place. What is
built from a version once for every host goes back to the bucket under the model's lock
(the OpenVINO IR, the precision study's models; the first version of a built-in model is
written under it too); what belongs to this host's CPU (compiled models) and exports stay
in the cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.errors import writing_to
from app.names import NAME_PATTERN
from app.storage.objects import utc_now, write_text_atomic
from app.storage.registry import (
    ACTIVE_FILE,
    METADATA_FILE,
    MODEL_NAME_RULE,
    ModelRegistry,
    RegistryError,
    activation_conflict,
)
from app.storage.s3 import CONFLICT, MISSING, S3Objects, error_code

log = logging.getLogger("convserve.registry")

CLAIM_FILE = ".claim"

# What a version's folder gains on one host and is not shared: models compiled for this
# host's CPU, and exports. (The OpenVINO IR and the int8 model of the precision study are
# uploaded with the version, so other hosts fetch them rather than build them again.)
LOCAL_ONLY = ("openvino/compiled/", "exports/")


class S3Registry(ModelRegistry):
    """`ModelRegistry` whose versions and pointers live in a bucket; ``cache`` holds the
    downloaded versions (and what this host derives from them)."""

    def __init__(self, url: str, cache: Path, client: Any = None) -> None:
        super().__init__(cache)
        self.url = url
        self.objects = S3Objects.from_url(url, client, where="the model registry")
        self.bucket, self.prefix, self.s3 = (
            self.objects.bucket,
            self.objects.prefix,
            self.objects.s3,
        )
        self._pointers: dict[str, tuple[str, int | None]] = {}  # name -> (ETag, version)
        self._metadata: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (ETag, data)
        self._lock = threading.Lock()

    def _key(self, *parts: str | int) -> str:
        return self.objects.key(*parts)

    def _list(self, prefix: str, delimiter: str | None = None) -> tuple[list[str], list[str]]:
        return self.objects.list_keys(prefix, delimiter)

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        base = self._key("")
        _, prefixes = self._list(base, "/")
        names = (p[len(base) :].rstrip("/") for p in prefixes)
        # Some servers (SeaweedFS) keep a deleted model's folder as an empty prefix.
        return sorted(n for n in names if NAME_PATTERN.match(n) and self._has_objects(n))

    def _has_objects(self, name: str) -> bool:
        page = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self._key(name, ""), MaxKeys=1)
        return bool(page.get("Contents"))

    def versions(self, name: str) -> list[int]:
        if not NAME_PATTERN.match(name):
            return []
        base = self._key(name, "")
        keys, _ = self._list(base)
        found = set()
        for key in keys:
            version, _, file = key[len(base) :].partition("/")
            if file == METADATA_FILE and version.isascii() and version.isdigit():
                found.add(int(version))
        return sorted(found)

    def _download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        try:
            self.s3.download_file(self.bucket, key, str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def version_dir(self, name: str, version: int) -> Path:
        """The version's folder in the local cache, downloaded first if it is not there."""
        folder = super().version_dir(name, version)
        if (folder / METADATA_FILE).is_file() or not NAME_PATTERN.match(name):
            return folder
        base = self._key(name, version, "")
        keys, _ = self._list(base)
        if self._key(name, version, METADATA_FILE) not in keys:
            return folder  # no such version: callers see no files, as on disk
        with self._lock:
            if (folder / METADATA_FILE).is_file():
                return folder
            tmp = folder.with_name(f".tmp-{uuid.uuid4().hex}")
            try:
                with writing_to("the model cache"):
                    for key in keys:
                        relative = key[len(base) :]
                        if relative and relative != CLAIM_FILE:
                            self._download(key, tmp / relative)
                    if folder.exists():  # a partial folder from an interrupted download
                        shutil.rmtree(folder)
                    os.rename(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def metadata(self, name: str, version: int) -> dict[str, Any]:
        """The version's metadata as the bucket has it now (it changes when a precision
        study is added): fetched again only when its ETag changed."""
        key = self._key(name, version, METADATA_FILE)
        known = self._metadata.get(key)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if known is not None:
            args["IfNoneMatch"] = known[0]
        try:
            response = self.s3.get_object(**args)
        except Exception as exc:
            code = error_code(exc)
            if code == "304" and known is not None:
                return {**known[1], "version": version}
            if code in MISSING:
                raise RegistryError(
                    "version_not_found", f"model {name!r} has no version {version}", 404
                ) from None
            raise
        data: dict[str, Any] = json.loads(response["Body"].read())
        self._metadata[key] = (response["ETag"], data)
        cached = super().version_dir(name, version) / METADATA_FILE
        if cached.is_file() and json.loads(cached.read_text(encoding="utf-8")) != data:
            # Changed since this host cached the version (a precision study): fetch the
            # files that came with the change (the study's int8 model), then the metadata.
            with writing_to("the model cache"):
                self._fetch_missing(name, version)
                write_text_atomic(cached, json.dumps(data, indent=2, default=str))
        return {**data, "version": version}

    def _fetch_missing(self, name: str, version: int) -> None:
        folder = super().version_dir(name, version)
        base = self._key(name, version, "")
        keys, _ = self._list(base)
        for key in keys:
            relative = key[len(base) :]
            if relative not in ("", CLAIM_FILE, METADATA_FILE) and not (folder / relative).exists():
                self._download(key, folder / relative)

    @contextlib.contextmanager
    def locked(self, name: str, version: int | None = None) -> Iterator[None]:
        """Hold ``name``'s lock (or its ``version``'s) across every host sharing the
        bucket (`S3Objects.locked`)."""
        with self.objects.locked(f"{name}/{'model' if version is None else version}"):
            yield

    def build_once(
        self, name: str, version: int, relative: str, build: Callable[[], object]
    ) -> None:
        """Build a version's derived file (its OpenVINO IR) on one host only: under the
        model's lock, fetch it if another host shared it meanwhile, else build it here and
        upload it for the others."""
        folder = self.version_dir(name, version)
        if (folder / relative).exists():
            return
        with self.locked(name, version):
            self._fetch_missing(name, version)
            if not (folder / relative).exists():
                build()
                self.share(name, version)

    def share(self, name: str, version: int) -> None:
        """Upload what this host added to a version's folder since it was written (the
        precision study's OpenVINO models), so other hosts fetch it instead of building it."""
        folder = super().version_dir(name, version)
        if not folder.is_dir():
            return
        base = self._key(name, version, "")
        keys, _ = self._list(base)
        with writing_to("the model registry"):
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                relative = path.relative_to(folder).as_posix()
                if relative.startswith(LOCAL_ONLY) or relative == METADATA_FILE:
                    continue
                if base + relative not in keys:
                    self.s3.upload_file(str(path), self.bucket, base + relative)

    def pointer(self, name: str) -> int | None:
        """The active pointer, fetched again only when its ETag changed."""
        return self._read_pointer(name)[1]

    def _read_pointer(self, name: str) -> tuple[str | None, int | None]:
        known = self._pointers.get(name)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name, ACTIVE_FILE)}
        if known is not None:
            args["IfNoneMatch"] = known[0]
        try:
            response = self.s3.get_object(**args)
        except Exception as exc:
            code = error_code(exc)
            if code == "304" and known is not None:
                return known
            if code in MISSING:
                self._pointers.pop(name, None)
                return None, None
            raise
        text = response["Body"].read().decode().strip()
        version = int(text) if text.isascii() and text.isdigit() else None
        self._pointers[name] = (response["ETag"], version)
        return response["ETag"], version

    # -- writing ---------------------------------------------------------------------------

    def _put(self, key: str, body: bytes, **conditions: str) -> str:
        return self.objects.put(key, body, **conditions)

    def write_version(
        self,
        name: str,
        save: Callable[[Path], None],
        metadata: dict[str, Any],
        activate: bool = False,
    ) -> int:
        if not NAME_PATTERN.match(name):
            raise RegistryError("invalid_model_name", MODEL_NAME_RULE, 422)
        folder = self.root / name
        with writing_to("the model cache"):
            folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            save(tmp)
            meta = {"name": name, "created_at": utc_now(), **metadata}
            write_text_atomic(tmp / METADATA_FILE, json.dumps(meta, indent=2, default=str))
            version = self._claim_number(name)
            files = sorted(
                p
                for p in tmp.rglob("*")
                if p.is_file()
                and p.name != METADATA_FILE
                and not p.relative_to(tmp).as_posix().startswith(LOCAL_ONLY)
            )
            with writing_to("the model registry"):
                for path in files:
                    key = self._key(name, version, path.relative_to(tmp).as_posix())
                    self.s3.upload_file(str(path), self.bucket, key)
                # Last: the version exists for readers from here on.
                self.s3.upload_file(
                    str(tmp / METADATA_FILE), self.bucket, self._key(name, version, METADATA_FILE)
                )
            os.rename(tmp, folder / str(version))  # the writer's own cache of it
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if activate:
            self.set_active(name, version)
        return version

    def _claim_number(self, name: str) -> int:
        """The next free version number, taken with a create-only write."""
        base = self._key(name, "")
        while True:
            keys, _ = self._list(base)
            taken = [
                int(v)
                for v in (k[len(base) :].split("/", 1)[0] for k in keys)
                if v.isascii() and v.isdigit()
            ]
            version = max(taken, default=0) + 1
            try:
                self._put(self._key(name, version, CLAIM_FILE), b"", IfNoneMatch="*")
                return version
            except Exception as exc:
                if error_code(exc) not in CONFLICT:
                    raise

    def set_active(self, name: str, version: int, if_match: str | None = None) -> None:
        """Point ``name`` at ``version`` with a conditional write: on the ETag of the
        pointer as read now, or on ``if_match``. A pointer changed by someone else in
        between, to another version, gives 409 ``activation_conflict``."""
        if not self.exists(name, version):
            raise RegistryError(
                "version_not_found", f"model {name!r} has no version {version}", 404
            )
        etag = if_match if if_match is not None else self.pointer_etag(name)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            new = self._put(self._key(name, ACTIVE_FILE), f"{version}\n".encode(), **condition)
            self._pointers[name] = (new, version)
        except Exception as exc:
            if error_code(exc) not in CONFLICT:
                raise
            if self._read_pointer(name)[1] != version:
                raise activation_conflict(name) from None
            # Moved meanwhile, to this very version: nothing was lost.
        with writing_to("the model cache"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.root / name / ACTIVE_FILE, f"{version}\n")

    def pointer_etag(self, name: str) -> str:
        """The ETag of the active pointer as it is now ("": there is none)."""
        return self._read_pointer(name)[0] or ""

    def update_metadata(self, name: str, version: int, changes: dict[str, Any]) -> None:
        data = self.metadata(name, version)
        data.pop("version", None)
        data.update(changes)
        text = json.dumps(data, indent=2, default=str)
        self._put(self._key(name, version, METADATA_FILE), text.encode())
        cached = super().version_dir(name, version)
        if cached.is_dir():
            with writing_to("the model cache"):
                write_text_atomic(cached / METADATA_FILE, text)

    def _delete_prefix(self, prefix: str, first: str | None = None) -> None:
        keys, _ = self._list(prefix)
        if first in keys:  # readers stop seeing the version before its files go
            keys.remove(first)
            self.s3.delete_object(Bucket=self.bucket, Key=first)
        self.objects.delete_keys(keys)

    def delete_version(self, name: str, version: int) -> None:
        self.check_deletable(name, version)
        with writing_to("the model registry"):
            self._delete_prefix(
                self._key(name, version, ""), first=self._key(name, version, METADATA_FILE)
            )
        shutil.rmtree(super().version_dir(name, version), ignore_errors=True)

    def clean_stale(self, older_than_seconds: float = 3600.0) -> None:
        """Remove what crashed writers and downloads left in the local cache."""
        ModelRegistry(self.root).clean_stale(older_than_seconds)

    def delete_model(self, name: str) -> None:
        if not NAME_PATTERN.match(name) or not self.versions(name):
            raise RegistryError("model_not_found", f"the registry has no model {name!r}", 404)
        with writing_to("the model registry"):
            for version in self.versions(name):
                self.s3.delete_object(
                    Bucket=self.bucket, Key=self._key(name, version, METADATA_FILE)
                )
            self._delete_prefix(self._key(name, ""))
        self._pointers.pop(name, None)
        shutil.rmtree(self.root / name, ignore_errors=True)
