"""MobileNet v1 (Howard et al., 2017): depthwise-separable convolutions.

A 3x3 convolution from M to N channels costs 9MN multiplications per pixel; split into a
3x3 depthwise convolution (one filter per channel, 9M) and a 1x1 pointwise one (MN), it
costs 8 to 9 times less for about the same accuracy. The network is a 3x3/2 convolution
and 13 such blocks, each followed by BatchNorm and ReLU6, with the channels doubling at
every stride 2, then global pooling and a 1x1 convolution as the classifier: 4,253,864
parameters at width 1.0. The width multiplier ``alpha`` thins every layer (cost and
parameters fall about as alpha squared). Layer names follow
``keras.applications.MobileNet``, so its ImageNet weights load into this network.
"""

from __future__ import annotations

import keras
from keras import layers

from app.nets.common import global_pooling

# (pointwise filters, stride) of the 13 depthwise-separable blocks.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def depthwise_separable_block(
    x: keras.KerasTensor,
    filters: int,
    alpha: float,
    strides: int,
    block_id: int,
    bn_momentum: float = 0.99,
) -> keras.KerasTensor:
    """3x3 depthwise convolution, BN, ReLU6; 1x1 pointwise convolution, BN, ReLU6.

    With stride 2 the input is padded on the bottom and right only and the depthwise
    convolution is "valid", as in the TensorFlow original the ImageNet weights come from.

    Args:
        x: input tensor `(batch, height, width, channels)`.
        filters: pointwise filters at width 1.0.
        alpha: width multiplier.
        strides: 1 or 2.
        block_id: block number (1-13), used in layer names.
        bn_momentum: momentum of the BatchNorm moving statistics.

    Returns:
        Tensor `(batch, height / strides, width / strides, int(filters * alpha))`.
    """
    if strides == 1:
        padding = "same"
    else:
        x = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{block_id}")(x)
        padding = "valid"
    x = layers.DepthwiseConv2D(
        3, padding=padding, strides=strides, use_bias=False, name=f"conv_dw_{block_id}"
    )(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"conv_dw_{block_id}_bn")(x)
    x = layers.ReLU(6.0, name=f"conv_dw_{block_id}_relu")(x)
    x = layers.Conv2D(
        int(filters * alpha), 1, padding="same", use_bias=False, name=f"conv_pw_{block_id}"
    )(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"conv_pw_{block_id}_bn")(x)
    return layers.ReLU(6.0, name=f"conv_pw_{block_id}_relu")(x)


def MobileNet(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    alpha: float = 1.0,
    classes: int = 1000,
    include_top: bool = True,
    pooling: str | None = None,
    dropout: float = 1e-3,
    classifier_activation: str | None = "softmax",
    name: str = "mobilenet",
    bn_momentum: float = 0.99,
) -> keras.Model:
    """MobileNet v1: a 3x3/2 convolution of 32, then 13 depthwise-separable blocks.

    Args:
        input_shape: `(height, width, 3)`, at least 32 pixels a side, scaled to [-1, 1].
        alpha: width multiplier (1.0 is the paper's base network; 0.75, 0.5, 0.25 thinner).
        classes: number of classes of the top.
        include_top: add global pooling, dropout and the 1x1-convolution classifier.
        pooling: without the top, `None` (4D output), `"avg"` or `"max"` (2D output).
        dropout: dropout before the classifier.
        classifier_activation: activation of the top classifier.
        name: the model's name.
        bn_momentum: momentum of the BatchNorm moving statistics.

    Returns:
        A `keras.Model` mapping `(batch, H, W, 3)` to `(batch, classes)` with the top,
        else to `(batch, H/32, W/32, 1024 * alpha)` or, pooled, `(batch, 1024 * alpha)`.
    """
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(int(32 * alpha), 3, padding="same", use_bias=False, strides=2, name="conv1")(
        inputs
    )
    x = layers.BatchNormalization(momentum=bn_momentum, name="conv1_bn")(x)
    x = layers.ReLU(6.0, name="conv1_relu")(x)
    for block_id, (filters, strides) in enumerate(BLOCKS, start=1):
        x = depthwise_separable_block(x, filters, alpha, strides, block_id, bn_momentum)
    if include_top:
        x = layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Conv2D(classes, 1, padding="same", name="conv_preds")(x)
        x = layers.Reshape((classes,), name="reshape_2")(x)
        x = layers.Activation(classifier_activation, name="predictions")(x)
    else:
        x = global_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)
