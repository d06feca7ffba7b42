"""EfficientNet-B0 (Tan and Le, 2019): MBConv blocks and compound scaling.

The base network B0 came from a neural architecture search; its block is MobileNetV2's
inverted residual (1x1 expansion, depthwise convolution, 1x1 linear projection, skip when
the shape allows) with squeeze-and-excitation (global pooling, a 1x1 reduction to a
quarter of the block's input channels, a 1x1 expansion and a sigmoid that reweights the
channels) and swish activations: 5,330,571 parameters at 224x224. Compound scaling then
grows depth, width and resolution together by one coefficient phi: depth x 1.2^phi,
width x 1.1^phi, resolution x 1.15^phi (the paper's alpha, beta, gamma, chosen so that
alpha * beta^2 * gamma^2 is about 2, i.e. each step of phi doubles the FLOPs); B1-B7 are
phi = 1 ... 7 with rounded coefficients. ``EfficientNet`` takes the coefficients,
``EfficientNetB0`` is (1.0, 1.0, 224).

Layer names follow ``keras.applications.EfficientNetB0``, whose ImageNet weights load into
this network. As in Keras, the network takes pixels in [0, 255] and normalises them with
the ImageNet mean and standard deviation itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from app.nets.common import global_pooling

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class StageArgs:
    kernel_size: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    se_ratio: float = 0.25


# B0's seven stages (Table 1 of the paper).
B0_STAGES: tuple[StageArgs, ...] = (
    StageArgs(3, 1, 32, 16, 1, 1),
    StageArgs(3, 2, 16, 24, 6, 2),
    StageArgs(5, 2, 24, 40, 6, 2),
    StageArgs(3, 3, 40, 80, 6, 2),
    StageArgs(5, 3, 80, 112, 6, 1),
    StageArgs(5, 4, 112, 192, 6, 2),
    StageArgs(3, 1, 192, 320, 6, 1),
)

# Keras' initialisers (from the TPU reference implementation).
CONV_INIT = keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
DENSE_INIT = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")


def _correct_pad(size: int, kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding that makes a stride-2 "valid" convolution match TensorFlow's "same"."""
    adjust = 1 - size % 2
    correct = kernel_size // 2
    return ((correct - adjust, correct), (correct - adjust, correct))


def mbconv_block(
    x: keras.KerasTensor,
    filters_in: int,
    filters_out: int,
    kernel_size: int,
    strides: int,
    expand_ratio: int,
    se_ratio: float,
    drop_rate: float,
    name: str,
    bn_momentum: float = 0.99,
) -> keras.KerasTensor:
    """Mobile inverted bottleneck with squeeze-and-excitation.

    1x1 expansion to ``filters_in * expand_ratio`` (left out when the ratio is 1), BN,
    swish; depthwise ``kernel_size`` convolution with ``strides``, BN, swish;
    squeeze-and-excitation; 1x1 projection to ``filters_out``, BN, no activation (the
    bottleneck stays linear, as in MobileNetV2). When stride is 1 and the channels match,
    the input is added back, after dropping the whole residual branch of a sample with
    probability ``drop_rate`` in training (stochastic depth).

    Args:
        x: input tensor `(batch, height, width, filters_in)`.
        filters_in: input channels.
        filters_out: output channels.
        kernel_size: size of the depthwise convolution.
        strides: 1 or 2.
        expand_ratio: expansion of the channels before the depthwise convolution.
        se_ratio: squeeze to ``filters_in * se_ratio`` channels (0: no SE).
        drop_rate: stochastic-depth rate of this block.
        name: prefix of the layer names (``block2a_``).
        bn_momentum: momentum of the BatchNorm moving statistics.

    Returns:
        Tensor `(batch, height / strides, width / strides, filters_out)`.
    """
    inputs = x
    filters = filters_in * expand_ratio
    if expand_ratio != 1:
        x = layers.Conv2D(
            filters, 1, padding="same", use_bias=False, kernel_initializer=CONV_INIT,
            name=f"{name}expand_conv",
        )(x)  # fmt: skip
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}expand_bn")(x)
        x = layers.Activation("swish", name=f"{name}expand_activation")(x)
    if strides == 2:
        x = layers.ZeroPadding2D(_correct_pad(x.shape[1], kernel_size), name=f"{name}dwconv_pad")(x)
    x = layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding="valid" if strides == 2 else "same",
        use_bias=False,
        depthwise_initializer=CONV_INIT,
        name=f"{name}dwconv",
    )(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}bn")(x)
    x = layers.Activation("swish", name=f"{name}activation")(x)
    if 0 < se_ratio <= 1:
        filters_se = max(1, int(filters_in * se_ratio))
        se = layers.GlobalAveragePooling2D(name=f"{name}se_squeeze")(x)
        se = layers.Reshape((1, 1, filters), name=f"{name}se_reshape")(se)
        se = layers.Conv2D(
            filters_se, 1, padding="same", activation="swish", kernel_initializer=CONV_INIT,
            name=f"{name}se_reduce",
        )(se)  # fmt: skip
        se = layers.Conv2D(
            filters, 1, padding="same", activation="sigmoid", kernel_initializer=CONV_INIT,
            name=f"{name}se_expand",
        )(se)  # fmt: skip
        x = layers.Multiply(name=f"{name}se_excite")([x, se])
    x = layers.Conv2D(
        filters_out, 1, padding="same", use_bias=False, kernel_initializer=CONV_INIT,
        name=f"{name}project_conv",
    )(x)  # fmt: skip
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}project_bn")(x)
    if strides == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x)
        x = layers.Add(name=f"{name}add")([x, inputs])
    return x


def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
    """Channels scaled by the width coefficient, rounded to a multiple of ``divisor`` and
    never more than 10% below the scaled figure."""
    scaled = filters * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    return math.ceil(depth_coefficient * repeats)


def EfficientNet(
    width_coefficient: float,
    depth_coefficient: float,
    input_shape: tuple[int, int, int],
    dropout_rate: float = 0.2,
    drop_connect_rate: float = 0.2,
    classes: int = 1000,
    include_top: bool = True,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
    name: str = "efficientnet",
    bn_momentum: float = 0.99,
) -> keras.Model:
    """An EfficientNet at the given compound-scaling coefficients.

    Stem: ImageNet normalisation, 3x3/2 convolution of 32 (scaled), BN, swish; then the
    seven stages of MBConv blocks (repeats scaled by depth, channels by width); then a 1x1
    convolution to 1280 (scaled), BN, swish.

    Args:
        width_coefficient: multiplier of every layer's channels.
        depth_coefficient: multiplier of every stage's repeats.
        input_shape: `(height, width, 3)`, pixels in [0, 255], at least 32 a side.
        dropout_rate: dropout before the classifier.
        drop_connect_rate: stochastic-depth rate of the last block (earlier blocks get
            proportionally less).
        classes: number of classes of the top.
        include_top: add global average pooling, dropout and the dense classifier.
        pooling: without the top, `None` (4D output), `"avg"` or `"max"` (2D output).
        classifier_activation: activation of the top classifier.
        name: the model's name.
        bn_momentum: momentum of the BatchNorm moving statistics.

    Returns:
        A `keras.Model` mapping `(batch, H, W, 3)` to `(batch, classes)` with the top,
        else to `(batch, H/32, W/32, channels)` or, pooled, `(batch, channels)`.
    """
    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1.0 / 255.0, name="rescaling")(inputs)
    normalization = layers.Normalization(axis=3, name="normalization")
    x = normalization(x)
    x = layers.ZeroPadding2D(_correct_pad(input_shape[0], 3), name="stem_conv_pad")(x)
    x = layers.Conv2D(
        round_filters(32, width_coefficient), 3, strides=2, padding="valid", use_bias=False,
        kernel_initializer=CONV_INIT, name="stem_conv",
    )(x)  # fmt: skip
    x = layers.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x)
    x = layers.Activation("swish", name="stem_activation")(x)

    total = float(sum(round_repeats(s.repeats, depth_coefficient) for s in B0_STAGES))
    index = 0
    for stage, args in enumerate(B0_STAGES, start=1):
        filters_in = round_filters(args.filters_in, width_coefficient)
        filters_out = round_filters(args.filters_out, width_coefficient)
        for repeat in range(round_repeats(args.repeats, depth_coefficient)):
            x = mbconv_block(
                x,
                filters_in if repeat == 0 else filters_out,
                filters_out,
                args.kernel_size,
                args.strides if repeat == 0 else 1,
                args.expand_ratio,
                args.se_ratio,
                drop_connect_rate * index / total,
                name=f"block{stage}{chr(ord('a') + repeat)}_",
                bn_momentum=bn_momentum,
            )
            index += 1

    x = layers.Conv2D(
        round_filters(1280, width_coefficient), 1, padding="same", use_bias=False,
        kernel_initializer=CONV_INIT, name="top_conv",
    )(x)  # fmt: skip
    x = layers.BatchNormalization(momentum=bn_momentum, name="top_bn")(x)
    x = layers.Activation("swish", name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = layers.Dense(
            classes, activation=classifier_activation, kernel_initializer=DENSE_INIT,
            name="predictions",
        )(x)  # fmt: skip
    else:
        x = global_pooling(x, pooling)
    model = keras.Model(inputs, x, name=name)
    # The ImageNet statistics, as variables (Keras' layout, so its weights files load);
    # Keras' own network gets them from its weights file, ours has them from the start.
    normalization.set_weights(
        [
            np.asarray(IMAGENET_MEAN_RGB, "float32"),
            np.square(np.asarray(IMAGENET_STD_RGB, "float32")),
            np.asarray(0, "int64"),
        ]
    )
    normalization.finalize_state()  # set_weights alone leaves the layer's constants as built
    return model


def EfficientNetB0(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    classes: int = 1000,
    include_top: bool = True,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
    name: str = "efficientnetb0",
    bn_momentum: float = 0.99,
) -> keras.Model:
    """EfficientNet-B0: width 1.0, depth 1.0, 224x224, dropout 0.2. See `EfficientNet`."""
    return EfficientNet(
        1.0,
        1.0,
        input_shape,
        dropout_rate=0.2,
        classes=classes,
        include_top=include_top,
        pooling=pooling,
        classifier_activation=classifier_activation,
        name=name,
        bn_momentum=bn_momentum,
    )
