"""Every network convserve can train, with its paper, sizes and pretrained weights.

``ARCHITECTURES`` is what ``GET /architectures``, the CLI and the console list, and what
training's ``base`` accepts; importing it does not import Keras (the ``convserve`` command
reads it). The parameter counts are our builders' at the paper's input
size and 1,000 classes (10 for LeNet-5); tests build each network and check them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


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


@dataclass(frozen=True)
class BaseSpec:
    name: str
    depth: int  # number of layers of the base without its top (fine_tune_at < depth)
    # Where fine-tuning starts when only the last stage is trained, and when the upper
    # half is: the first layer of a block, so that no block is half frozen.
    top_stage: int
    upper_half: int


# The networks with ImageNet weights, usable as a pretrained base. Depths as Keras 3.15
# builds them (tests check these against the built networks and the layer names).
BASES: dict[str, BaseSpec] = {
    # block_13_expand: the stride-2 block and everything after it (7x7 at 224 px);
    # block_6_expand: from the second stride-2 block on.
    "mobilenet_v2": BaseSpec("mobilenet_v2", depth=154, top_stage=116, upper_half=54),
    # conv5_block1_1_conv: the last stage; conv4_block1_1_conv: the last two.
    "resnet50": BaseSpec("resnet50", depth=175, top_stage=143, upper_half=81),
    # block5_conv1: the last block; block4_conv1: the last two.
    "vgg16": BaseSpec("vgg16", depth=19, top_stage=15, upper_half=11),
    # conv_pad_12: the last stride-2 block and after (7x7 at 224 px); conv_pad_6: from the
    # 14x14 blocks on.
    "mobilenet": BaseSpec("mobilenet", depth=86, top_stage=73, upper_half=36),
    # block6a_expand_conv: the last stride-2 stage (7x7); block4a_expand_conv: from 14x14.
    "efficientnet_b0": BaseSpec("efficientnet_b0", depth=237, top_stage=162, upper_half=75),
}

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
