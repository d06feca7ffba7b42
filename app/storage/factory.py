"""The one place that picks the storage backend from the settings."""

from __future__ import annotations

from typing import Any

from app.storage.datasets import DatasetStore
from app.storage.local import LocalObjects
from app.storage.registry import ModelRegistry

# Datasets live beside the models: a hidden folder of the registry's (never a model name).
DATASETS_PREFIX = ".datasets"


def open_registry(settings: Any) -> ModelRegistry:
    """The registry the settings name: the bucket of ``registry_url`` (``s3://...``, with
    ``models_dir`` as its local cache), or the ``models_dir`` folder."""
    if getattr(settings, "registry_url", None):
        from app.storage.s3registry import S3Registry

        return S3Registry(settings.registry_url, settings.models_dir)
    return ModelRegistry(settings.models_dir)


def open_datasets(settings: Any, registry: ModelRegistry | None = None) -> DatasetStore:
    """The dataset store, on the registry's storage: ``<models_dir>/.datasets/``, or
    ``<registry_url>/.datasets/`` in the bucket."""
    from app.storage.s3registry import S3Registry

    if isinstance(registry, S3Registry):
        objects: Any = registry.objects.child(DATASETS_PREFIX, where="the dataset store")
    elif getattr(settings, "registry_url", None):
        from app.storage.s3 import S3Objects

        url = settings.registry_url.rstrip("/") + "/" + DATASETS_PREFIX
        objects = S3Objects.from_url(url, where="the dataset store")
    else:
        objects = LocalObjects(settings.models_dir / DATASETS_PREFIX, where="the dataset store")
    return DatasetStore(objects, settings)
