"""Every network convserve can train, with its paper, sizes and pretrained weights.

``ARCHITECTURES`` is what ``GET /architectures``, the CLI and the console list, and what
training's ``base`` accepts; importing it does not import Keras (the ``convserve`` command
reads it). The parameter counts are our builders' at the paper's input
size and 1,000 classes (10 for LeNet-5); tests build each network and check them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Architecture:
    name: str
    title: str
    paper: str
    year: int
    input_size: int  # the paper's input side
    parameters: int  # ours, at input_size with the paper's classes
    paper_parameters: str  # the paper's (or Keras') figure, as they state it
    # "dense": the paper's top is flatten and dense layers, kept when trained from
    # scratch; "pool": global pooling and one classifier, the same as our head.
    top: Literal["dense", "pool"]
    min_size: int  # smallest input side the network accepts
    default_size: int  # training's image_size when none is given
    # Keras' file of ImageNet weights without the top (None: Keras has none; the
    # network trains from scratch only).
    keras_weights: str | None = None

    @property
    def pretrained(self) -> bool:
        return self.keras_weights is not None

    def weights_cached(self) -> bool:
        """Whether Keras' ImageNet weights are on this machine (no download needed)."""
        if self.keras_weights is None:
            return False
        home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
        return (home / "models" / self.keras_weights).is_file()


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "lenet5", "LeNet-5", "LeCun et al., Gradient-based learning applied to document"
            " recognition", 1998, 32, 61_706, "about 60 thousand", "dense", 16, 32,
        ),
        Architecture(
            "alexnet", "AlexNet", "Krizhevsky, Sutskever and Hinton, ImageNet classification"
            " with deep convolutional neural networks", 2012, 227, 60_965_224,
            "60 million", "dense", 67, 227,
        ),
        Architecture(
            "vgg16", "VGG-16", "Simonyan and Zisserman, Very deep convolutional networks for"
            " large-scale image recognition", 2014, 224, 138_357_544,
            "138 million (Keras: 138,357,544)", "dense", 32, 224,
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Architecture(
            "googlenet", "GoogLeNet (Inception v1)", "Szegedy et al., Going deeper with"
            " convolutions", 2014, 224, 6_998_552, "6.8 million (Table 1, rounded, no biases)",
            "pool", 32, 224,
        ),
        Architecture(
            "resnet50", "ResNet-50", "He et al., Deep residual learning for image recognition",
            2015, 224, 25_636_712, "25.6 million (Keras: 25,636,712)", "pool", 32, 224,
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Architecture(
            "mobilenet", "MobileNet v1", "Howard et al., MobileNets: efficient convolutional"
            " neural networks for mobile vision applications", 2017, 224, 4_253_864,
            "4.2 million (Keras: 4,253,864)", "pool", 32, 224,
            "mobilenet_1_0_224_tf_no_top.h5",
        ),
        Architecture(
            "mobilenet_v2", "MobileNetV2", "Sandler et al., MobileNetV2: inverted residuals"
            " and linear bottlenecks", 2018, 224, 3_538_984, "3.4 million (Keras: 3,538,984)",
            "pool", 32, 224, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        ),
        Architecture(
            "efficientnet_b0", "EfficientNet-B0", "Tan and Le, EfficientNet: rethinking model"
            " scaling for convolutional neural networks", 2019, 224, 5_330_571,
            "5.3 million (Keras: 5,330,571)", "pool", 32, 224, "efficientnetb0_notop.h5",
        ),
    )
}  # fmt: skip


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
    import keras

    from app.nets.alexnet import AlexNet
    from app.nets.efficientnet import EfficientNetB0
    from app.nets.inception import GoogLeNet
    from app.nets.lenet import LeNet5
    from app.nets.mobilenet import MobileNet
    from app.nets.resnet import ResNet50
    from app.nets.vgg import VGG16

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
    import keras

    return {
        "resnet50": keras.applications.ResNet50,
        "vgg16": keras.applications.VGG16,
        "mobilenet": keras.applications.MobileNet,
        "efficientnet_b0": keras.applications.EfficientNetB0,
    }[name]
