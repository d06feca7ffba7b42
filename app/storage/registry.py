"""The model registry on disk.

Layout (see ``models/README.md``)::

    models/<name>/<version>/model.keras     the Keras model (raw pixels in, probabilities out)
    models/<name>/<version>/metadata.json   classes, input size, base, metrics, history ...
    models/<name>/active                    the version being served (one line)

A version is written into a hidden temporary folder and renamed into place, so a crash
never leaves half a version; readers ignore hidden folders. A write the disk refuses (full,
read-only) raises ``storage_full`` or ``storage_not_writable`` and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.errors import ConvserveError, writing_to
from app.names import NAME_PATTERN
from app.storage.local import file_lock
from app.storage.objects import fsync_dir, name_rule, utc_now, write_text_atomic

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
ACTIVE_FILE = "active"
LOCK_FILE = ".lock"
# Thumbnails of validation images a trained version keeps, and their index.
SAMPLES_DIR = "validation"
SAMPLES_FILE = "validation.json"
SAMPLE_NAME = re.compile(r"^[0-9]{1,4}-[0-9]{1,4}-[0-9]{1,4}\.jpg$")
MODEL_NAME_RULE = name_rule("model")


class RegistryError(ConvserveError):
    """A registry operation that cannot be done."""


def activation_conflict(name: str) -> RegistryError:
    """The error of an activation that lost to another one made at the same time."""
    return RegistryError(
        "activation_conflict",
        f"another activation of {name!r} happened at the same time; look at /models and try again",
        409,
    )


class ModelRegistry:
    """Numbered versions of named models under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name)
        )

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if (p.name.isascii() and p.name.isdigit())
            and (p / METADATA_FILE).is_file()
            and (p / MODEL_FILE).exists()
        )

    def exists(self, name: str, version: int) -> bool:
        return version in self.versions(name)

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def model_path(self, name: str, version: int) -> Path:
        return self.version_dir(name, version) / MODEL_FILE

    def metadata(self, name: str, version: int) -> dict[str, Any]:
        path = self.version_dir(name, version) / METADATA_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(
                "version_not_found", f"model {name!r} has no version {version}", 404
            ) from None
        data["version"] = version
        return data

    def update_metadata(self, name: str, version: int, changes: dict[str, Any]) -> None:
        """Add ``changes`` to a version's metadata (one atomic rewrite of the file)."""
        data = self.metadata(name, version)
        data.pop("version", None)
        data.update(changes)
        path = self.version_dir(name, version) / METADATA_FILE
        with writing_to("the model registry"):
            write_text_atomic(path, json.dumps(data, indent=2, default=str))

    def validation_samples(self, name: str, version: int) -> dict[str, Any] | None:
        """The validation images a trained version kept (``validation.json``), if any."""
        path = self.version_dir(name, version) / SAMPLES_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return data

    def validation_image(self, name: str, version: int, file: str) -> Path | None:
        """One kept validation thumbnail; None for a name that is not one."""
        if not SAMPLE_NAME.match(file):
            return None
        path = self.version_dir(name, version) / SAMPLES_DIR / file
        return path if path.is_file() else None

    def pointer(self, name: str) -> int | None:
        """The version the active pointer file names, if there is one."""
        try:
            return int((self.root / name / ACTIVE_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def active_version(self, name: str) -> int | None:
        """The version the active pointer names, else the newest version, else None."""
        versions = self.versions(name)
        pointed = self.pointer(name)
        if pointed in versions:
            return pointed
        return versions[-1] if versions else None

    # -- writing ---------------------------------------------------------------------------

    def write_version(
        self,
        name: str,
        save: Callable[[Path], None],
        metadata: dict[str, Any],
        activate: bool = False,
    ) -> int:
        """Write a new version: ``save(folder)`` writes the model files into a temporary
        folder, which is then renamed to the next free version number.

        Returns:
            The new version number.
        """
        if not NAME_PATTERN.match(name):
            raise RegistryError("invalid_model_name", MODEL_NAME_RULE, 422)
        with writing_to("the model registry"):
            version = self._write_version(name, save, metadata)
        if activate:
            self.set_active(name, version)
        return version

    def _write_version(
        self, name: str, save: Callable[[Path], None], metadata: dict[str, Any]
    ) -> int:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            save(tmp)
            meta = {"name": name, "created_at": utc_now(), **metadata}
            write_text_atomic(tmp / METADATA_FILE, json.dumps(meta, indent=2, default=str))
            fsync_dir(tmp)
            while True:
                existing = [
                    int(p.name) for p in folder.iterdir() if (p.name.isascii() and p.name.isdigit())
                ]
                version = max(existing, default=0) + 1
                try:
                    # rename() refuses an existing non-empty target: another writer that
                    # took this number first makes us try the next one.
                    os.rename(tmp, folder / str(version))
                    break
                except OSError:
                    if not (folder / str(version)).exists():
                        raise
            fsync_dir(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """Hold ``name``'s lock (an exclusive ``flock`` on ``<name>/.lock``) for a step that
        must not run twice at once, across threads and processes sharing this folder."""
        with file_lock(self.root / name / LOCK_FILE, "the model registry"):
            yield

    def build_once(
        self, name: str, version: int, relative: str, build: Callable[[], object]
    ) -> None:
        """Make the file ``relative`` of a version (one derived from its model, such as
        its OpenVINO IR) exist: ``build()`` writes it into the version's folder, unless it
        is there already. In a folder every replica shares, the first to need it builds
        it (its writes are atomic, so two builders at once do no harm)."""
        if not (self.version_dir(name, version) / relative).exists():
            build()

    def share(self, name: str, version: int) -> None:
        """Make files added to a version's folder after it was written visible to other
        hosts: nothing to do in a folder they share (see `S3Registry.share`)."""

    def pointer_etag(self, name: str) -> str:
        """A tag of the active pointer as it is now, which changes with every write of it
        ("" while there is none): what `set_active`'s ``if_match`` compares."""
        try:
            st = (self.root / name / ACTIVE_FILE).stat()
        except FileNotFoundError:
            return ""
        return f'"{st.st_ino:x}-{st.st_mtime_ns:x}"'  # each write replaces the file

    def set_active(self, name: str, version: int, if_match: str | None = None) -> None:
        """Point ``name`` at ``version``. With ``if_match`` (a `pointer_etag` read
        earlier), only if nobody moved the pointer since (or moved it to ``version``):
        otherwise 409 ``activation_conflict``."""
        if not self.exists(name, version):
            raise RegistryError(
                "version_not_found", f"model {name!r} has no version {version}", 404
            )
        if if_match is None:
            self._write_pointer(name, version)
            return
        with self.locked(name):  # (not taken without a condition: bootstrap holds it)
            if self.pointer_etag(name) != if_match:
                if self.pointer(name) == version:
                    return  # moved meanwhile, to this very version: nothing lost
                raise activation_conflict(name)
            self._write_pointer(name, version)

    def _write_pointer(self, name: str, version: int) -> None:
        with writing_to("the model registry"):
            write_text_atomic(self.root / name / ACTIVE_FILE, f"{version}\n")

    def check_deletable(self, name: str, version: int) -> None:
        """Raise unless ``version`` exists and is not the active one."""
        if not self.exists(name, version):
            raise RegistryError(
                "version_not_found", f"model {name!r} has no version {version}", 404
            )
        if self.active_version(name) == version:
            raise RegistryError(
                "version_active",
                f"version {version} of {name!r} is active; activate another version first",
                409,
            )

    def delete_version(self, name: str, version: int) -> None:
        self.check_deletable(name, version)
        folder = self.version_dir(name, version)
        # Hide it first (atomic), then remove: readers never see a half-deleted version.
        trash = folder.with_name(f".trash-{version}-{uuid.uuid4().hex}")
        with writing_to("the model registry"):
            os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def delete_model(self, name: str) -> None:
        """Delete every version of ``name`` and its pointer."""
        folder = self.root / name
        if not NAME_PATTERN.match(name) or not folder.is_dir():
            raise RegistryError("model_not_found", f"the registry has no model {name!r}", 404)
        trash = self.root / f".trash-{name}-{uuid.uuid4().hex}"
        with writing_to("the model registry"):
            os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_stale(self, older_than_seconds: float = 3600.0) -> None:
        """Remove temporary folders left by writers that crashed (old enough that no live
        writer can still own them)."""
        now = time.time()
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".trash-") and now - p.stat().st_mtime > older_than_seconds:
                    shutil.rmtree(p, ignore_errors=True)
        for name in self.names():
            for p in (self.root / name).iterdir():
                stale = now - p.stat().st_mtime > older_than_seconds
                if p.is_dir() and p.name.startswith((".tmp-", ".trash-")) and stale:
                    shutil.rmtree(p, ignore_errors=True)
