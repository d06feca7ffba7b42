"""Datasets kept by the service: labelled images, stored once by content, in versions.

On any `ObjectStore` (the registry's folder or bucket, under ``.datasets/``)::

    <name>/images/<sha256>          an image's bytes; its id is the SHA-256 of its bytes
    <name>/versions/<n>.json        version n: its classes and images (id -> label, file
                                    name, size, source, time), its parent and what changed

A version is a manifest of ids and labels, never a copy of the images, and it is never
changed once written: every change (add, remove, relabel, add a class) writes the next
one. Changes to one dataset are made one at a time under its lock (a ``flock``, or a lock
object in the bucket), so two changes at once both land, one after the other; the
manifest's create-only write is a second guard against a writer without the lock.

Deleting a version removes its manifest, then the bytes of every image that no remaining
version lists. A model version keeps its own record of what it trained on (dataset name
and version, counts, the validation image ids): that record outlives the dataset version,
but the images it names are gone once no stored version lists them.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from app.errors import ConvserveError
from app.names import LABEL_PATTERN, LABEL_RULE, NAME_PATTERN
from app.storage.objects import (
    ObjectExists,
    ObjectMissing,
    ObjectStore,
    name_rule,
    utc_now,
)

DATASET_NAME_RULE = name_rule("dataset")
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
SOURCES = ("upload", "console", "api", "prediction")


class DatasetStoreError(ConvserveError):
    """A dataset operation that cannot be done."""


def not_found(name: str) -> DatasetStoreError:
    return DatasetStoreError("dataset_not_found", f"there is no dataset {name!r}", 404)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise DatasetStoreError("invalid_dataset_name", DATASET_NAME_RULE, 422)
    return name


def check_label(label: str) -> str:
    """A class name: it becomes a folder in exports and training, so no slashes, no
    control characters, no leading dot, 1-100 characters."""
    if not LABEL_PATTERN.match(label):
        raise DatasetStoreError(
            "invalid_label",
            f"{label!r} is not usable: {LABEL_RULE}",
            422,
        )
    return label


@dataclass
class NewImage:
    """An image to add: its bytes, or a file to read them from."""

    label: str
    filename: str
    source: str = "api"
    data: bytes | None = None
    path: Path | None = None
    origin: dict[str, Any] | None = None  # where it came from (a captured prediction)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


@dataclass
class Change:
    """What one write did: the version it made (or the unchanged latest) and counts."""

    version: int
    changed: bool
    added: list[str] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "changed": self.changed,
            "added": len(self.added),
            "added_ids": self.added,
            "duplicates": self.duplicates,
        }


@dataclass(frozen=True)
class DatasetLimits:
    max_images: int = 100_000
    max_bytes: int = 20 * 1024**3


def per_class(manifest: dict[str, Any]) -> dict[str, int]:
    counts = dict.fromkeys(manifest["classes"], 0)
    for record in manifest["images"].values():
        counts[record["label"]] = counts.get(record["label"], 0) + 1
    return counts


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed from manifest ``old`` to ``new``."""
    a, b = old["images"], new["images"]
    return {
        "name": new["name"],
        "old": old["version"],
        "new": new["version"],
        "added": sorted(
            ({"id": i, "label": b[i]["label"]} for i in b.keys() - a.keys()),
            key=lambda r: (r["label"], r["id"]),
        ),
        "removed": sorted(
            ({"id": i, "label": a[i]["label"]} for i in a.keys() - b.keys()),
            key=lambda r: (r["label"], r["id"]),
        ),
        "relabelled": sorted(
            (
                {"id": i, "old": a[i]["label"], "to": b[i]["label"]}
                for i in a.keys() & b.keys()
                if a[i]["label"] != b[i]["label"]
            ),
            key=lambda r: r["id"],
        ),
        "classes_added": sorted(set(new["classes"]) - set(old["classes"])),
        "classes_removed": sorted(set(old["classes"]) - set(new["classes"])),
    }


def _version_info(manifest: dict[str, Any]) -> dict[str, Any]:
    counts = per_class(manifest)
    return {
        "version": manifest["version"],
        "created_at": manifest["created_at"],
        "parent": manifest.get("parent"),
        "change": manifest.get("change", {}),
        "classes": counts,
        "images": sum(counts.values()),
    }


def _empty(name: str) -> dict[str, Any]:
    return {"name": name, "version": 0, "classes": [], "images": {}}


def safe_filename(filename: str) -> str:
    """The last part of an uploaded file's name, fit for a folder (may be empty)."""
    base = PurePosixPath(filename.replace("\\", "/")).name
    return re.sub(r"[^\w.-]", "_", base).lstrip(".")[-80:]


class DatasetStore:
    """Named, versioned datasets on an `ObjectStore`."""

    def __init__(self, objects: ObjectStore, settings: Any = None) -> None:
        self.objects = objects
        self.limits = DatasetLimits(
            getattr(settings, "max_dataset_images", DatasetLimits.max_images),
            getattr(settings, "max_dataset_bytes", DatasetLimits.max_bytes),
        )

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        found = self.objects.children("")
        return sorted(n for n in found if NAME_PATTERN.match(n) and self.versions(n))

    def versions(self, name: str) -> list[int]:
        check_name(name)
        found = []
        for key in self.objects.keys(f"{name}/versions/"):
            stem = key.rsplit("/", 1)[1].removesuffix(".json")
            if stem.isascii() and stem.isdigit():
                found.append(int(stem))
        return sorted(found)

    def latest(self, name: str) -> int:
        versions = self.versions(name)
        if not versions:
            raise not_found(name)
        return versions[-1]

    def manifest(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Version ``version`` (default: the latest) of ``name``."""
        if version is None:
            version = self.latest(name)
        try:
            data: dict[str, Any] = json.loads(self.objects.read(f"{name}/versions/{version}.json"))
        except ObjectMissing:
            if not self.versions(name):
                raise not_found(name) from None
            raise DatasetStoreError(
                "dataset_version_not_found", f"dataset {name!r} has no version {version}", 404
            ) from None
        return data

    def summary(self, name: str, with_versions: bool = True) -> dict[str, Any]:
        """The dataset as ``GET /datasets/{name}`` shows it; ``with_versions=False`` reads
        only the first and the latest manifests (a listing of every dataset)."""
        versions = self.versions(name)
        if not versions:
            raise not_found(name)
        read = versions if with_versions else sorted({versions[0], versions[-1]})
        manifests = {v: self.manifest(name, v) for v in read}
        latest = manifests[versions[-1]]
        counts = per_class(latest)
        return {
            "name": name,
            "latest_version": versions[-1],
            "versions": [_version_info(manifests[v]) for v in versions] if with_versions else [],
            "classes": counts,
            "images": sum(counts.values()),
            "bytes": sum(r["bytes"] for r in latest["images"].values()),
            "created_at": manifests[versions[0]]["created_at"],
            "updated_at": latest["created_at"],
        }

    def version_info(self, name: str, version: int) -> dict[str, Any]:
        return _version_info(self.manifest(name, version))

    def image_bytes(self, name: str, image_id: str) -> bytes:
        """An image's bytes, as long as a stored version lists it."""
        check_name(name)
        if not IMAGE_ID.match(image_id):
            raise DatasetStoreError("image_not_found", f"no image {image_id!r}", 404)
        try:
            return self.objects.read(f"{name}/images/{image_id}")
        except ObjectMissing:
            raise DatasetStoreError(
                "image_not_found", f"dataset {name!r} has no image {image_id!r}", 404
            ) from None

    def images(
        self,
        name: str,
        version: int | None = None,
        label: str | None = None,
        offset: int = 0,
        limit: int | None = 50,
    ) -> dict[str, Any]:
        """One page of a version's images (of one class, or all), by class then file name;
        ``limit=None``: all of them from ``offset``."""
        manifest = self.manifest(name, version)
        if label is not None and label not in manifest["classes"]:
            raise DatasetStoreError(
                "class_not_found",
                f"version {manifest['version']} of dataset {name!r} has no class {label!r}",
                404,
            )
        rows = sorted(
            (
                {"id": i, **r}
                for i, r in manifest["images"].items()
                if label is None or r["label"] == label
            ),
            key=lambda r: (r["label"], r["filename"], r["id"]),
        )
        return {
            "version": manifest["version"],
            "classes": manifest["classes"],
            "label": label,
            "total": len(rows),
            "offset": offset,
            "limit": limit,
            "items": rows[offset:] if limit is None else rows[offset : offset + limit],
        }

    def diff(self, name: str, old: int, new: int) -> dict[str, Any]:
        return diff(self.manifest(name, old), self.manifest(name, new))

    # -- writing ---------------------------------------------------------------------------

    def create(self, name: str, images: Iterable[NewImage] = ()) -> Change:
        """A new dataset: version 1, empty or with ``images``."""
        check_name(name)
        with self.objects.locked(f"datasets/{name}"):
            if self.versions(name):
                raise DatasetStoreError(
                    "dataset_exists", f"a dataset named {name!r} exists already", 409
                )
            return self._add(_empty(name), list(images), {"action": "create"})

    def add(self, name: str, images: Iterable[NewImage], create: bool = False) -> Change:
        """Add images (each to its label's class, made if new): the next version, or the
        latest unchanged when every image was there already. ``create``: a dataset that
        does not exist yet is made (its version 1)."""
        check_name(name)
        items = list(images)
        with self.objects.locked(f"datasets/{name}"):
            if self.versions(name):
                base = self.manifest(name)
                labels = sorted({i.label for i in items})
                change = {"action": "add", "labels": labels}
            elif create:
                base, change = _empty(name), {"action": "create"}
            else:
                raise not_found(name)
            return self._add(base, items, change)

    def _add(self, base: dict[str, Any], items: list[NewImage], change: dict[str, Any]) -> Change:
        name = base["name"]
        images = dict(base["images"])
        classes = set(base["classes"])
        new: dict[str, tuple[NewImage, bytes]] = {}
        duplicates: list[dict[str, str]] = []
        for item in items:
            check_label(item.label)
            data = item.read()
            image_id = hashlib.sha256(data).hexdigest()
            if image_id in images or image_id in new:
                held = images[image_id]["label"] if image_id in images else new[image_id][0].label
                duplicates.append({"filename": item.filename, "id": image_id, "label": held})
                continue
            new[image_id] = (item, data)
        if not new and base["version"] and not ({i.label for i in items} - classes):
            return Change(base["version"], False, [], duplicates)
        count = len(images) + len(new)
        size = sum(r["bytes"] for r in images.values()) + sum(len(d) for _, d in new.values())
        self._check_limits(name, count, size)
        now = utc_now()
        for image_id, (item, data) in new.items():
            self.objects.write(f"{name}/images/{image_id}", data)
            images[image_id] = {
                "label": item.label,
                "filename": item.filename,
                "bytes": len(data),
                "source": item.source,
                "added_at": now,
                **({"origin": item.origin} if item.origin else {}),
            }
        classes |= {i.label for i in items}
        change = {**change, "added": len(new), "duplicates": len(duplicates)}
        version = self._write(base, images, sorted(classes), change)
        return Change(version, True, sorted(new), duplicates)

    def _check_limits(self, name: str, count: int, size: int) -> None:
        if count > self.limits.max_images:
            raise DatasetStoreError(
                "dataset_too_large",
                f"dataset {name!r} would hold {count} images; the limit is"
                f" {self.limits.max_images} (CONVSERVE_MAX_DATASET_IMAGES)",
                413,
            )
        if size > self.limits.max_bytes:
            raise DatasetStoreError(
                "dataset_too_large",
                f"dataset {name!r} would hold {size} bytes of images; the limit is"
                f" {self.limits.max_bytes} (CONVSERVE_MAX_DATASET_BYTES)",
                413,
            )

    def _write(
        self,
        base: dict[str, Any],
        images: dict[str, Any],
        classes: list[str],
        change: dict[str, Any],
    ) -> int:
        name, version = base["name"], base["version"] + 1
        manifest = {
            "name": name,
            "version": version,
            "created_at": utc_now(),
            "parent": base["version"] or None,
            "change": change,
            "classes": classes,
            "images": images,
        }
        try:
            self.objects.write(
                f"{name}/versions/{version}.json",
                json.dumps(manifest, sort_keys=True).encode(),
                create_only=True,
            )
        except ObjectExists:
            raise DatasetStoreError(
                "dataset_conflict",
                f"dataset {name!r} changed at the same time elsewhere; try again",
                409,
            ) from None
        return version

    def _change(self, name: str, edit: Any) -> int:
        """Apply ``edit(images, classes) -> change`` to the latest version: the next one."""
        check_name(name)
        with self.objects.locked(f"datasets/{name}"):
            base = self.manifest(name)
            images = {i: dict(r) for i, r in base["images"].items()}
            classes = set(base["classes"])
            change = edit(images, classes)
            return self._write(base, images, sorted(classes), change)

    def remove(self, name: str, image_id: str) -> int:
        def edit(images: dict[str, Any], classes: set[str]) -> dict[str, Any]:
            record = images.pop(image_id, None)
            if record is None:
                raise DatasetStoreError(
                    "image_not_found", f"dataset {name!r} has no image {image_id!r}", 404
                )
            return {"action": "remove", "image": image_id, "label": record["label"]}

        return self._change(name, edit)

    def relabel(self, name: str, image_id: str, label: str, create_class: bool = False) -> int:
        check_label(label)

        def edit(images: dict[str, Any], classes: set[str]) -> dict[str, Any]:
            record = images.get(image_id)
            if record is None:
                raise DatasetStoreError(
                    "image_not_found", f"dataset {name!r} has no image {image_id!r}", 404
                )
            if label not in classes:
                if not create_class:
                    raise DatasetStoreError(
                        "class_not_found",
                        f"dataset {name!r} has no class {label!r}; send create_class: true"
                        " to make it",
                        422,
                    )
                classes.add(label)
            old = record["label"]
            record["label"] = label
            return {"action": "relabel", "image": image_id, "from": old, "to": label}

        return self._change(name, edit)

    def add_class(self, name: str, label: str) -> int:
        check_label(label)

        def edit(images: dict[str, Any], classes: set[str]) -> dict[str, Any]:
            if label in classes:
                raise DatasetStoreError(
                    "class_exists", f"dataset {name!r} has a class {label!r} already", 409
                )
            classes.add(label)
            return {"action": "add_class", "label": label}

        return self._change(name, edit)

    def delete_version(self, name: str, version: int) -> None:
        """Delete an old version (never the latest: it is the dataset as it is now), then
        the bytes of the images no remaining version lists."""
        with self.objects.locked(f"datasets/{name}"):
            versions = self.versions(name)
            if version not in versions:
                self.manifest(name, version)  # the right 404
            if version == versions[-1]:
                raise DatasetStoreError(
                    "version_latest",
                    f"version {version} is the latest of dataset {name!r}; delete older"
                    " versions, or the whole dataset",
                    409,
                )
            self.objects.delete(f"{name}/versions/{version}.json")
            self.objects.delete(f"{name}/health/{version}.json")
            kept: set[str] = set()
            for v in versions:
                if v != version:
                    kept |= self.manifest(name, v)["images"].keys()
            for key in self.objects.keys(f"{name}/images/"):
                if key.rsplit("/", 1)[1] not in kept:
                    self.objects.delete(key)

    def delete(self, name: str) -> None:
        """Delete the dataset: its versions first (it is gone for readers), then its images."""
        with self.objects.locked(f"datasets/{name}"):
            versions = self.versions(name)
            if not versions:
                raise not_found(name)
            for v in reversed(versions):
                self.objects.delete(f"{name}/versions/{v}.json")
            self.objects.delete_prefix(f"{name}/")

    # -- label health ------------------------------------------------------------------------

    def health(self, name: str, version: int) -> dict[str, Any] | None:
        """The label-health report last computed for a version, if any."""
        try:
            report: dict[str, Any] = json.loads(self.objects.read(f"{name}/health/{version}.json"))
        except ObjectMissing:
            return None
        return report

    def save_health(self, name: str, version: int, report: dict[str, Any]) -> None:
        self.manifest(name, version)  # 404 for a version that is gone
        self.objects.write(f"{name}/health/{version}.json", json.dumps(report).encode())

    def confirmed(self, name: str) -> set[str]:
        """Images a reviewer kept with their label: a report marks them."""
        try:
            return set(json.loads(self.objects.read(f"{name}/health/confirmed.json")))
        except ObjectMissing:
            return set()

    def confirm(self, name: str, image_ids: Iterable[str]) -> set[str]:
        with self.objects.locked(f"datasets/{name}"):
            self.latest(name)
            ids = self.confirmed(name) | {i for i in image_ids if IMAGE_ID.match(i)}
            self.objects.write(f"{name}/health/confirmed.json", json.dumps(sorted(ids)).encode())
        return ids

    # -- using a version -------------------------------------------------------------------

    def _files(self, manifest: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(id, label, file name within the class) of every image; names made unique."""
        out, taken = [], set()
        for image_id, r in sorted(
            manifest["images"].items(), key=lambda kv: (kv[1]["label"], kv[1]["filename"], kv[0])
        ):
            file = safe_filename(r["filename"]) or f"{image_id[:16]}.img"
            if (r["label"], file) in taken:
                stem, dot, ext = file.rpartition(".")
                file = f"{stem}-{image_id[:8]}.{ext}" if dot else f"{file}-{image_id[:8]}"
            taken.add((r["label"], file))
            out.append((image_id, r["label"], file))
        return out

    def file_ids(self, name: str, version: int) -> dict[str, str]:
        """The ``<class>/<file>`` -> image id map that `materialize` lays out."""
        manifest = self.manifest(name, version)
        return {f"{label}/{file}": i for i, label, file in self._files(manifest)}

    def materialize(self, name: str, version: int, folder: Path) -> dict[str, str]:
        """Write version ``version`` as class folders under ``folder`` (what training
        reads); returns each file's path relative to ``folder`` -> its image id."""
        manifest = self.manifest(name, version)
        ids = {}
        for label in manifest["classes"]:
            (folder / label).mkdir(parents=True, exist_ok=True)
        for image_id, label, file in self._files(manifest):
            (folder / label / file).write_bytes(self.image_bytes(name, image_id))
            ids[f"{label}/{file}"] = image_id
        return ids

    def export(self, name: str, version: int, target: Path) -> None:
        """Version ``version`` as a .zip of class folders (as an upload would be)."""
        manifest = self.manifest(name, version)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
            for label in manifest["classes"]:
                zf.writestr(f"{label}/", b"")
            for image_id, label, file in self._files(manifest):
                zf.writestr(f"{label}/{file}", self.image_bytes(name, image_id))
