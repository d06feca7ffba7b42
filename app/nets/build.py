"""Builds the networks of the catalogue (`app.nets.catalog`) with Keras."""

from __future__ import annotations

from collections.abc import Callable

import keras

from app.nets.alexnet import AlexNet
from app.nets.catalog import ARCHITECTURES
from app.nets.efficientnet import EfficientNetB0
from app.nets.inception import GoogLeNet
from app.nets.lenet import LeNet5
from app.nets.mobilenet import MobileNet
from app.nets.resnet import ResNet50
from app.nets.vgg import VGG16


def build_network(
    name: str,
    input_shape: tuple[int, int, int],
    include_top: bool = True,
    classes: int = 1000,
    network_name: str | None = None,
    bn_momentum: float = 0.99,
) -> keras.Model:
    """Our builder of ``name``, randomly initialised.

    Args:
        name: a key of ``ARCHITECTURES``.
        input_shape: `(height, width, channels)`.
        include_top: the paper's classifier (softmax over ``classes``), else the feature
            map of the last block.
        classes: number of classes of the top.
        network_name: the model's name (default: ``name``).
        bn_momentum: momentum of the BatchNorm moving statistics, for the networks that
            have BatchNorm.

    Returns:
        A `keras.Model` from `(batch, *input_shape)`.
    """
    builders: dict[str, Callable[..., keras.Model]] = {
        "lenet5": LeNet5,
        "alexnet": AlexNet,
        "vgg16": VGG16,
        "googlenet": GoogLeNet,
        "resnet50": ResNet50,
        "mobilenet": MobileNet,
        "efficientnet_b0": EfficientNetB0,
    }
    if name == "mobilenet_v2":
        return keras.applications.MobileNetV2(
            input_shape=input_shape,
            include_top=include_top,
            weights=None,
            classes=classes,
            name=network_name or name,
        )
    if name not in builders:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    kwargs: dict[str, object] = dict(
        input_shape=input_shape,
        include_top=include_top,
        classes=classes,
        name=network_name or name,
    )
    if name in ("resnet50", "mobilenet", "efficientnet_b0"):
        kwargs["bn_momentum"] = bn_momentum
    return builders[name](**kwargs)


def keras_application(name: str) -> Callable[..., keras.Model]:
    """The ``keras.applications`` builder of the same network, to copy ImageNet weights
    from (its layer names are ours)."""
    return {
        "resnet50": keras.applications.ResNet50,
        "vgg16": keras.applications.VGG16,
        "mobilenet": keras.applications.MobileNet,
        "efficientnet_b0": keras.applications.EfficientNetB0,
    }[name]
