"""What the network builders share: copying weights between networks of the same design."""

from __future__ import annotations

import keras
from keras import layers


def copy_weights(source: keras.Model, target: keras.Model, skip: tuple[type, ...] = ()) -> None:
    """Copy every weighted layer of ``source`` into the layer of the same name in ``target``.

    Args:
        source: the network to copy from (``keras.applications``' usually).
        target: ours, whose layers carry the same names.
        skip: layer types not to copy (e.g. an input ``Normalization`` whose Keras name is
            generated, and whose ImageNet statistics ours sets itself).

    Raises:
        ValueError: a weighted layer of ``source`` has no counterpart in ``target`` or the
            shapes differ.
    """
    for layer in source.layers:
        weights = layer.get_weights()
        if not weights or isinstance(layer, skip):
            continue
        try:
            counterpart = target.get_layer(layer.name)
        except ValueError as exc:
            raise ValueError(f"layer {layer.name!r} is missing from {target.name!r}") from exc
        counterpart.set_weights(weights)


def global_pooling(x: keras.KerasTensor, pooling: str | None) -> keras.KerasTensor:
    """A network without its top: the 4D feature map (``None``), or its global average
    (``"avg"``) or maximum (``"max"``) per channel, 2D."""
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def classifier_top(
    x: keras.KerasTensor,
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
) -> keras.KerasTensor:
    """Global average pooling and a dense classifier, or the pooling asked for without it."""
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return global_pooling(x, pooling)


@keras.saving.register_keras_serializable(package="convserve")
class LocalResponseNormalization(layers.Layer):
    """Across-channel normalisation of AlexNet (section 3.3): each activation is divided by
    ``(k + alpha * sum of squares of its `depth_radius` neighbours on each side) ** beta``,
    with the paper's k=2, n=5 (radius 2), alpha=1e-4, beta=0.75.

    The paper's alpha multiplies the plain sum over the n channels (as TensorFlow's
    ``local_response_normalization`` does), not their mean.
    """

    def __init__(
        self,
        depth_radius: int = 2,
        bias: float = 2.0,
        alpha: float = 1e-4,
        beta: float = 0.75,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.depth_radius = depth_radius
        self.bias = bias
        self.alpha = alpha
        self.beta = beta

    def call(self, inputs):
        ops = keras.ops
        squares = ops.square(inputs)
        # Sum over a window of channels: pad the channel axis, then add shifted copies.
        r = self.depth_radius
        padded = ops.pad(squares, [[0, 0], [0, 0], [0, 0], [r, r]])
        channels = ops.shape(inputs)[-1]
        window = sum(padded[..., i : i + channels] for i in range(2 * r + 1))
        return inputs / ops.power(self.bias + self.alpha * window, self.beta)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "depth_radius": self.depth_radius,
            "bias": self.bias,
            "alpha": self.alpha,
            "beta": self.beta,
        }
