"""The Inception module and GoogLeNet, Inception v1 (Szegedy et al., 2014).

An Inception module runs 1x1, 3x3 and 5x5 convolutions and a 3x3 max-pool side by side
and stacks their outputs along the channels, so the next layer chooses which scale
matters. Run as is, the 3x3 and 5x5 convolutions over hundreds of channels would cost too
much; a 1x1 convolution first reduces the channels (the "bottleneck": 192 channels to 16
before a 5x5 of 32 cuts its multiplications about tenfold), and another 1x1 projects the
pooled branch. GoogLeNet stacks nine such modules into a 22-layer network of about 6.8
million parameters, a twelfth of AlexNet's, ending in global average pooling instead of
large dense layers. The paper's two auxiliary classifiers only helped training and are
left out (the Inception v3 paper found their effect small); local response normalisation
follows the stem as in the paper.
"""

from __future__ import annotations

import keras
from keras import layers

from app.nets.common import LocalResponseNormalization, global_pooling


def inception_module(
    x: keras.KerasTensor,
    filters_1x1: int,
    filters_3x3_reduce: int,
    filters_3x3: int,
    filters_5x5_reduce: int,
    filters_5x5: int,
    filters_pool_proj: int,
    name: str,
) -> keras.KerasTensor:
    """Four branches concatenated: 1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 max-pool then 1x1.

    Every convolution has "same" padding and ReLU, so the branches keep the input's height
    and width.

    Args:
        x: input tensor `(batch, height, width, channels)`.
        filters_1x1: filters of the 1x1 branch.
        filters_3x3_reduce: the 1x1 reduction before the 3x3 convolution.
        filters_3x3: filters of the 3x3 convolution.
        filters_5x5_reduce: the 1x1 reduction before the 5x5 convolution.
        filters_5x5: filters of the 5x5 convolution.
        filters_pool_proj: the 1x1 projection after the max-pool.
        name: prefix of the layer names (``inception_3a``).

    Returns:
        Tensor `(batch, height, width, filters_1x1 + filters_3x3 + filters_5x5 +
        filters_pool_proj)`.
    """

    def conv(t: keras.KerasTensor, filters: int, size: int, suffix: str) -> keras.KerasTensor:
        return layers.Conv2D(
            filters, size, padding="same", activation="relu", name=f"{name}_{suffix}"
        )(t)

    branch1 = conv(x, filters_1x1, 1, "1x1")
    branch3 = conv(conv(x, filters_3x3_reduce, 1, "3x3_reduce"), filters_3x3, 3, "3x3")
    branch5 = conv(conv(x, filters_5x5_reduce, 1, "5x5_reduce"), filters_5x5, 5, "5x5")
    pooled = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    branch_pool = conv(pooled, filters_pool_proj, 1, "pool_proj")
    return layers.Concatenate(name=f"{name}_output")([branch1, branch3, branch5, branch_pool])


# GoogLeNet's modules (Table 1 of the paper): #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5,
# pool proj; "pool" marks the 3x3/2 max-pools between the groups.
MODULES: tuple[tuple[str, tuple[int, int, int, int, int, int]] | str, ...] = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    "pool",
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    "pool",
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)


def GoogLeNet(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    classes: int = 1000,
    include_top: bool = True,
    pooling: str | None = None,
    dropout: float = 0.4,
    lrn: bool = True,
    classifier_activation: str | None = "softmax",
    name: str = "googlenet",
) -> keras.Model:
    """GoogLeNet: stem (7x7/2 conv 64, pool, 1x1 conv 64, 3x3 conv 192, pool), nine
    Inception modules in three groups with 3x3/2 max-pools between them, global average
    pooling, dropout 0.4 and a dense classifier.

    Args:
        input_shape: `(height, width, 3)`, at least 32 pixels a side.
        classes: number of classes of the top.
        include_top: add global average pooling, dropout and the dense classifier.
        pooling: without the top, `None` (4D output), `"avg"` or `"max"` (2D output).
        dropout: dropout before the classifier (the paper's 40%).
        lrn: local response normalisation in the stem, as in the paper.
        classifier_activation: activation of the top classifier.
        name: the model's name.

    Returns:
        A `keras.Model` mapping `(batch, H, W, 3)` to `(batch, classes)` with the top,
        else to `(batch, H/32, W/32, 1024)` or, pooled, `(batch, 1024)`.
    """
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(64, 7, strides=2, padding="same", activation="relu", name="conv1_7x7")(inputs)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    if lrn:
        x = LocalResponseNormalization(name="norm1")(x)
    x = layers.Conv2D(64, 1, activation="relu", name="conv2_3x3_reduce")(x)
    x = layers.Conv2D(192, 3, padding="same", activation="relu", name="conv2_3x3")(x)
    if lrn:
        x = LocalResponseNormalization(name="norm2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    pools = 2
    for module in MODULES:
        if isinstance(module, str):  # "pool"
            pools += 1
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{pools}")(x)
        else:
            label, filters = module
            x = inception_module(x, *filters, name=f"inception_{label}")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = global_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)
