"""The one place that picks the storage backend from the settings."""

from __future__ import annotations

from typing import Any

from app.storage.captures import CaptureStore
from app.storage.datasets import DatasetStore
from app.storage.local import LocalObjects
from app.storage.objects import ObjectStore
from app.storage.registry import ModelRegistry
from app.storage.sql import settings_database

# Datasets and captured images live beside the models: hidden folders of the registry's
# (never a model name).
DATASETS_PREFIX = ".datasets"
CAPTURES_PREFIX = ".captures"


def open_registry(settings: Any) -> ModelRegistry:
    """The registry the settings name: the bucket of ``registry_url`` (``s3://...``, with
    ``models_dir`` as its local cache), or the ``models_dir`` folder."""
    if getattr(settings, "registry_url", None):
        from app.storage.s3registry import S3Registry

        return S3Registry(settings.registry_url, settings.models_dir)
    return ModelRegistry(settings.models_dir)


def _beside_models(
    settings: Any, registry: ModelRegistry | None, prefix: str, where: str
) -> ObjectStore:
    """A hidden folder of the registry's storage: ``<models_dir>/<prefix>/``, or
    ``<registry_url>/<prefix>/`` in the bucket."""
    from app.storage.s3registry import S3Registry

    if isinstance(registry, S3Registry):
        return registry.objects.child(prefix, where=where)
    if getattr(settings, "registry_url", None):
        from app.storage.s3 import S3Objects

        return S3Objects.from_url(settings.registry_url.rstrip("/") + "/" + prefix, where=where)
    return LocalObjects(settings.models_dir / prefix, where=where)


def open_datasets(settings: Any, registry: ModelRegistry | None = None) -> DatasetStore:
    """The dataset store, on the registry's storage."""
    objects = _beside_models(settings, registry, DATASETS_PREFIX, "the dataset store")
    return DatasetStore(objects, settings)


def open_captures(settings: Any, registry: ModelRegistry | None = None) -> CaptureStore:
    """Captured predictions: rows in the service's database, images on the registry's
    storage."""
    objects = _beside_models(settings, registry, CAPTURES_PREFIX, "the captured images")
    return CaptureStore(settings_database(settings), objects, settings.max_capture_bytes)
