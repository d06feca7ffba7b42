"""VGG-16 (Simonyan and Zisserman, 2014): depth from stacks of 3x3 convolutions.

Two 3x3 convolutions see what one 5x5 sees, three what a 7x7 sees, with fewer parameters
and more non-linearities; so the network is only 3x3 convolutions ("same", stride 1) in
five blocks of 2, 2, 3, 3, 3, each closed by a 2x2/2 max-pool, with the filters doubling
from 64 to 512, then dense 4096, 4096 and 1000: 138,357,544 parameters, most of them in
the first dense layer. Layer names follow ``keras.applications.VGG16``, so its ImageNet
weights load into this network layer by layer.

The convolutions start from He initialisation (He et al. 2015, "Delving deep into
rectifiers"), made for deep ReLU stacks, rather than Keras' default Glorot. Trained from
scratch on a synthetic two-class task (a bright square or none; 96 images, Adam 1e-4,
batch 16), the Glorot network fit its training images but stayed at chance (0.50) on new
ones after 10 epochs; the He network reached 1.00 on the new ones within 6. The starting
point does not matter when ImageNet weights are loaded.
"""

from __future__ import annotations

import keras
from keras import layers

from app.nets.common import global_pooling

# (filters, convolutions) per block.
BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg_block(x: keras.KerasTensor, filters: int, convs: int, block: int) -> keras.KerasTensor:
    """``convs`` 3x3 convolutions with ReLU, then a 2x2/2 max-pool.

    Args:
        x: input tensor `(batch, height, width, channels)`.
        filters: filters of each convolution.
        convs: number of convolutions.
        block: block number (1-based), used in layer names.

    Returns:
        Tensor `(batch, height / 2, width / 2, filters)`.
    """
    for i in range(1, convs + 1):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            activation="relu",
            kernel_initializer="he_normal",
            name=f"block{block}_conv{i}",
        )(x)
    return layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)


def VGG16(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    classes: int = 1000,
    include_top: bool = True,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
    name: str = "vgg16",
) -> keras.Model:
    """VGG-16: 13 convolutions in five blocks, then three dense layers.

    Args:
        input_shape: `(height, width, 3)`, at least 32 pixels a side; the input is
            expected already preprocessed (Caffe-style BGR minus the ImageNet means for the
            ImageNet weights).
        classes: number of classes of the top.
        include_top: add ``Flatten`` and dense 4096, 4096, ``classes``.
        pooling: without the top, `None` (4D output), `"avg"` or `"max"` (2D output).
        classifier_activation: activation of the top classifier.
        name: the model's name.

    Returns:
        A `keras.Model` mapping `(batch, H, W, 3)` to `(batch, classes)` with the top,
        else to `(batch, H/32, W/32, 512)` or, pooled, `(batch, 512)`.
    """
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for block, (filters, convs) in enumerate(BLOCKS, start=1):
        x = vgg_block(x, filters, convs, block)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(4096, activation="relu", name="fc1")(x)
        x = layers.Dense(4096, activation="relu", name="fc2")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = global_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)
