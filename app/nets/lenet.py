"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998), in its modern form.

The paper's network read 32x32 greyscale digits: two convolution and subsampling stages
(6 then 16 filters of 5x5), then fully connected layers of 120 and 84 units and a 10-way
output, about 60 thousand parameters. The modern form keeps the shapes and swaps the
parts that training practice has since replaced: ReLU instead of the scaled tanh,
max pooling (or plain average pooling) instead of trainable subsampling, a dense C5
instead of the partially connected convolution, softmax instead of the RBF output.
"""

from __future__ import annotations

import keras
from keras import layers


def LeNet5(
    input_shape: tuple[int, int, int] = (32, 32, 1),
    classes: int = 10,
    include_top: bool = True,
    pooling: str = "max",
    classifier_activation: str | None = "softmax",
    name: str = "lenet5",
) -> keras.Model:
    """LeNet-5: conv 6@5x5, pool 2, conv 16@5x5, pool 2, dense 120, dense 84, dense classes.

    Convolutions are "valid" as in the paper: 32x32 becomes 28, 14, 10 and 5 before the
    dense layers (5x5x16 = 400 features).

    Args:
        input_shape: `(height, width, channels)`, greyscale (1) or colour (3); at least 16
            pixels a side.
        classes: number of classes of the output.
        include_top: add the dense layers (120, 84, classes); without them the output is
            the last pooled feature map.
        pooling: subsampling, `"max"` (the modern choice) or `"avg"` (closer to the paper).
        classifier_activation: activation of the output layer.
        name: the model's name.

    Returns:
        A `keras.Model` mapping `(batch, H, W, C)` to `(batch, classes)` with the top,
        else to `(batch, ((H - 4) / 2 - 4) / 2, ..., 16)`.
    """
    if pooling not in ("max", "avg"):
        raise ValueError("pooling must be 'max' or 'avg'")
    pool = layers.MaxPooling2D if pooling == "max" else layers.AveragePooling2D
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(6, 5, activation="relu", name="c1_conv")(inputs)
    x = pool(2, name="s2_pool")(x)
    x = layers.Conv2D(16, 5, activation="relu", name="c3_conv")(x)
    x = pool(2, name="s4_pool")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(120, activation="relu", name="c5_dense")(x)
        x = layers.Dense(84, activation="relu", name="f6_dense")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=name)
