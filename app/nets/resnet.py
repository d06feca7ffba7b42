"""ResNet-50 (He et al., 2015) built from its identity and convolutional blocks.

Layer names follow ``keras.applications.ResNet50`` (``conv2_block1_1_conv`` ...), so the
ImageNet weights Keras distributes load into this network layer by layer.
"""

from __future__ import annotations

import keras
from keras import layers

from app.nets.common import classifier_top, copy_weights

__all__ = ["ResNet50", "convolutional_block", "copy_weights", "identity_block"]

# Keras' ResNet-50 (ported from the Caffe model) uses this BatchNorm epsilon; anything else
# shifts the outputs of a network loaded with its weights.
BN_EPSILON = 1.001e-5

# (filters of the three convolutions, number of blocks) per stage, conv2 .. conv5.
STAGES: tuple[tuple[tuple[int, int, int], int], ...] = (
    ((64, 64, 256), 3),
    ((128, 128, 512), 4),
    ((256, 256, 1024), 6),
    ((512, 512, 2048), 3),
)


def _bn(momentum: float, name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(axis=3, epsilon=BN_EPSILON, momentum=momentum, name=name)


def _prefix(stage: int, block: int) -> str:
    return f"conv{stage}_block{block}"


def identity_block(
    x: keras.KerasTensor,
    kernel_size: int,
    filters: tuple[int, int, int],
    stage: int,
    block: int,
    bn_momentum: float = 0.99,
) -> keras.KerasTensor:
    """The block whose shortcut is the identity: input and output shapes are equal.

    Main path: 1x1 conv, BN, ReLU; ``kernel_size`` conv ("same"), BN, ReLU; 1x1 conv, BN.
    The input is added back before the last ReLU.

    Args:
        x: input tensor of shape `(batch, height, width, filters[2])`.
        kernel_size: size of the middle convolution.
        filters: the number of filters of the three convolutions.
        stage: stage number (2 to 5), used in layer names.
        block: block number within the stage (1-based), used in layer names.
        bn_momentum: momentum of the BatchNorm moving statistics.

    Returns:
        Tensor of shape `(batch, height, width, filters[2])`.
    """
    f1, f2, f3 = filters
    name = _prefix(stage, block)
    momentum = bn_momentum
    shortcut = x
    x = layers.Conv2D(f1, 1, name=f"{name}_1_conv")(x)
    x = _bn(momentum, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(f2, kernel_size, padding="same", name=f"{name}_2_conv")(x)
    x = _bn(momentum, name=f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(f3, 1, name=f"{name}_3_conv")(x)
    x = _bn(momentum, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def convolutional_block(
    x: keras.KerasTensor,
    kernel_size: int,
    filters: tuple[int, int, int],
    stage: int,
    block: int,
    strides: tuple[int, int] = (2, 2),
    bn_momentum: float = 0.99,
) -> keras.KerasTensor:
    """The block whose shortcut is a 1x1 convolution, used where the shape changes.

    The shortcut carries a 1x1 convolution with the block's stride and a BatchNorm, so
    that it has the main path's shape at the addition. As in the original (Caffe) model
    the stride sits on the first 1x1 convolution of the main path.

    Args:
        x: input tensor of shape `(batch, height, width, channels)`.
        kernel_size: size of the middle convolution.
        filters: the number of filters of the three convolutions.
        stage: stage number (2 to 5), used in layer names.
        block: block number within the stage (1-based), used in layer names.
        strides: stride of the first convolution and of the shortcut.
        bn_momentum: momentum of the BatchNorm moving statistics.

    Returns:
        Tensor of shape `(batch, height / strides[0], width / strides[1], filters[2])`.
    """
    f1, f2, f3 = filters
    name = _prefix(stage, block)
    momentum = bn_momentum
    # Created before the main path, as in keras.applications, so that both networks list
    # their weights in the same order.
    shortcut = layers.Conv2D(f3, 1, strides=strides, name=f"{name}_0_conv")(x)
    shortcut = _bn(momentum, name=f"{name}_0_bn")(shortcut)
    x = layers.Conv2D(f1, 1, strides=strides, name=f"{name}_1_conv")(x)
    x = _bn(momentum, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(f2, kernel_size, padding="same", name=f"{name}_2_conv")(x)
    x = _bn(momentum, name=f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(f3, 1, name=f"{name}_3_conv")(x)
    x = _bn(momentum, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def ResNet50(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    classes: int = 1000,
    include_top: bool = True,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
    name: str = "resnet50",
    bn_momentum: float = 0.99,
) -> keras.Model:
    """ResNet-50: the stem, then 16 residual blocks in four stages.

    Stem: zero-pad 3, 7x7/2 conv 64, BN, ReLU, zero-pad 1, 3x3/2 max-pool. Stages of
    [64, 64, 256] x3, [128, 128, 512] x4, [256, 256, 1024] x6, [512, 512, 2048] x3 blocks;
    the first block of each stage is a convolutional block (stride 1 in stage 2, 2 after).

    Args:
        input_shape: `(height, width, 3)`; the input is expected already preprocessed.
        classes: number of classes of the top.
        include_top: add global average pooling and a `Dense(classes)` classifier.
        pooling: without the top, `None` (4D output), `"avg"` or `"max"` (2D output).
        classifier_activation: activation of the top classifier.
        name: the model's name.
        bn_momentum: momentum of the BatchNorm moving statistics. Keras' 0.99 suits
            fine-tuning; a network trained from scratch on a small set needs a shorter
            memory (0.9), or its moving statistics still describe the random
            initialisation when the epochs run out, and validation accuracy stays at chance.

    Returns:
        A `keras.Model` mapping `(batch, H, W, 3)` to `(batch, classes)` with the top,
        else to `(batch, H/32, W/32, 2048)` or, pooled, `(batch, 2048)`.
    """
    inputs = keras.Input(shape=input_shape)
    x = layers.ZeroPadding2D(padding=3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = _bn(bn_momentum, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    for stage, (filters, blocks) in enumerate(STAGES, start=2):
        strides = (1, 1) if stage == 2 else (2, 2)
        x = convolutional_block(x, 3, filters, stage, 1, strides, bn_momentum)
        for block in range(2, blocks + 1):
            x = identity_block(x, 3, filters, stage, block, bn_momentum)

    x = classifier_top(x, include_top, pooling, classes, classifier_activation)
    return keras.Model(inputs, x, name=name)
