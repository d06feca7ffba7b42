"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012).

Five convolutions and three dense layers, about 60 million parameters, trained on two GPUs
of 3 GB each: the paper split conv2, conv4 and conv5 into two towers that see only their
own half of the channels. ``groups=2`` keeps that split (60,965,224 parameters at 227x227,
the paper's figure); ``groups=1`` is the one-tower form most re-implementations use
(62,378,344). The paper's 224x224 input only adds up with 227. Local response
normalisation after conv1 and conv2 follows the paper; it was later found to add little
and BatchNorm replaced it, so ``lrn=False`` leaves it out. ReLU, overlapping 3x3/2
max-pooling and dropout 0.5 before the dense layers are the paper's choices.
"""

from __future__ import annotations

import keras
from keras import layers

from app.nets.common import LocalResponseNormalization


def AlexNet(
    input_shape: tuple[int, int, int] = (227, 227, 3),
    classes: int = 1000,
    include_top: bool = True,
    groups: int = 2,
    lrn: bool = True,
    dropout: float = 0.5,
    classifier_activation: str | None = "softmax",
    name: str = "alexnet",
) -> keras.Model:
    """AlexNet: conv 96@11x11/4, pool, conv 256@5x5, pool, conv 384, 384, 256 @3x3, pool,
    dense 4096, 4096, classes.

    Args:
        input_shape: `(height, width, 3)`; at least 67 pixels a side (227 in the paper).
        classes: number of classes of the output.
        include_top: add the dense layers; without them the output is the last pooled
            feature map (6x6x256 at 227).
        groups: 2 for the paper's two towers in conv2, conv4 and conv5; 1 for one tower.
        lrn: local response normalisation after the first two convolutions.
        dropout: dropout before each of the two 4096-unit layers.
        classifier_activation: activation of the output layer.
        name: the model's name.

    Returns:
        A `keras.Model` mapping `(batch, H, W, 3)` to `(batch, classes)` with the top,
        else to `(batch, h, w, 256)`.
    """
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(96, 11, strides=4, activation="relu", name="conv1")(inputs)
    if lrn:
        x = LocalResponseNormalization(name="norm1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = layers.Conv2D(256, 5, padding="same", groups=groups, activation="relu", name="conv2")(x)
    if lrn:
        x = LocalResponseNormalization(name="norm2")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", groups=groups, activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", groups=groups, activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dropout(dropout, name="dropout6")(x)
        x = layers.Dense(4096, activation="relu", name="fc6")(x)
        x = layers.Dropout(dropout, name="dropout7")(x)
        x = layers.Dense(4096, activation="relu", name="fc7")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=name)
