"""Version 1 of the built-in models: the ImageNet classifiers, written on first start."""

from __future__ import annotations

import json
import os
from pathlib import Path

from app.storage.registry import MODEL_FILE, ModelRegistry

BOOTSTRAP_MODELS = ("resnet50", "mobilenet_v2")
# Keras' own copy of the ImageNet class index (what decode_predictions downloads).
CLASS_INDEX_URL = (
    "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"
)


def _keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_class_names(download: bool) -> list[str]:
    """The 1000 ImageNet class names, from Keras' cache or (``download``) Keras' download.

    Without either, placeholder names ``imagenet_0000`` ...: an untrained model has no
    meaningful labels anyway.
    """
    cached = _keras_cache() / "imagenet_class_index.json"
    path: Path | None = cached if cached.exists() else None
    if path is None and download:
        import keras

        path = Path(
            keras.utils.get_file(
                "imagenet_class_index.json", CLASS_INDEX_URL, cache_subdir="models"
            )
        )
    if path is None:
        return [f"imagenet_{i:04d}" for i in range(1000)]
    index = json.loads(path.read_text())
    return [index[str(i)][1] for i in range(1000)]


def bootstrap(registry: ModelRegistry, name: str, pretrained: str, image_size: int) -> int:
    """Write the ImageNet classifier ``name`` as its first version and activate it.

    Replicas sharing the registry may start at the same moment: under the model's lock, a
    version another one wrote first is used instead of writing a second.

    Raises whatever Keras raises when the weights cannot be had (no network, no cache).
    """
    with registry.locked(name):
        existing = registry.active_version(name)
        if existing is not None:
            return existing
        return _write_bootstrap(registry, name, pretrained, image_size)


def _write_bootstrap(registry: ModelRegistry, name: str, pretrained: str, image_size: int) -> int:
    from app.nets.transfer import build_imagenet_classifier

    weights = None if pretrained in ("", "none") else pretrained
    model = build_imagenet_classifier(name, image_size, weights)
    classes = imagenet_class_names(download=weights == "imagenet")
    metadata = {
        "source": "bootstrap",
        "architecture": name,
        "base": name,
        "class_names": classes,
        "image_size": image_size,
        "pretrained": weights,
        "trained": weights is not None,
        "metrics": None,
        "history": [],
        "dataset": None,
        "params": None,
    }
    return registry.write_version(
        name, lambda folder: model.save(folder / MODEL_FILE), metadata, activate=True
    )
