"""Grad-CAM (Selvaraju et al., 2017): which pixels an answer came from.

The gradient of a class's score with respect to the last convolutional feature map weighs
the map's channels; their weighted sum, through a ReLU, is a coarse map of where the
evidence for the class is, scaled up to the input. The weights are taken location by
location (HiResCAM, Draelos and Carin, 2020), which is Grad-CAM exactly for the networks
that end in global pooling and stays faithful for those that end in dense layers.

It runs on the version's Keras model (whatever runtime serves it): every classifier here
is raw pixels -> [augmentation] -> preprocessing -> one network (a nested Keras model) ->
[pooling, dropout, dense]. The map is taken at the network's last layer with a spatial
output (found, never named), and the class score is the final dense layer's value before
its softmax where there is one (the log-probability otherwise), which does not saturate as
a probability near 1 does.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# The smallest feature map worth explaining with (the side, in cells).
MIN_MAP = 4
# A colour ramp for the overlay (cold to hot): blue, cyan, green, yellow, red.
_RAMP = np.array(
    [[0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], dtype=np.float32
)


@dataclass
class Explainer:
    """A version's Keras model cut for Grad-CAM."""

    pre: list[Any]  # the layers before the network (preprocessing)
    grad_model: Any  # network input -> (last spatial feature map, network output)
    post: list[Any]  # the layers after the network (pooling, dropout, dense)
    layer: str  # the feature map's layer, "network/layer"
    image_size: int

    @classmethod
    def load(cls, model_path: Path, image_size: int) -> Explainer:
        from app.nets.transfer import load_classifier

        return cls.from_model(load_classifier(model_path), image_size)

    @classmethod
    def from_model(cls, model: Any, image_size: int) -> Explainer:
        import keras

        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        nested = [i for i, layer in enumerate(layers) if isinstance(layer, keras.Model)]
        if nested:
            # The network is the largest nested model (augmentation is a small Sequential).
            at = max(nested, key=lambda i: len(layers[i].layers))
            network = layers[at]
        else:  # a plain model: it is the network
            at, network, layers = 0, model, [model]
        spatial = [
            layer
            for layer in network.layers
            if not isinstance(layer, keras.layers.InputLayer | keras.layers.ZeroPadding2D)
            and len(layer.output.shape) == 4
        ]
        if not spatial:
            raise ValueError(f"{network.name} has no layer with a spatial output")
        # The last one, unless the input is so small that its map is under 4x4 (7x7 at
        # 224 pixels; a map of 1 or 4 values says little of where): then the last one
        # of at least 4x4, or else the largest.
        larger = [layer for layer in spatial if min(layer.output.shape[1:3]) >= MIN_MAP]
        conv = (
            larger[-1]
            if larger
            else max(spatial[::-1], key=lambda layer: min(layer.output.shape[1:3]))
        )
        post = layers[at + 1 :]
        last = network.layers[-1]
        if not post and _is_softmax_dense(last):
            # The network ends in its own classifier (LeNet-5, AlexNet, VGG from scratch):
            # stop before it, and take its score before the softmax below.
            grad_model = keras.Model(network.inputs, [conv.output, last.input])
            post = [last]
        else:
            grad_model = keras.Model(network.inputs, [conv.output, network.output])
        pre = [layer for layer in layers[:at] if layer.name != "augmentation"]
        return cls(pre, grad_model, post, f"{network.name}/{conv.name}", image_size)

    def maps(self, images: np.ndarray, classes: list[int]) -> np.ndarray:
        """Grad-CAM maps ``[N, S, S]`` in 0-1 for ``images`` (``[N, S, S, 3]`` raw
        pixels), each for its class in ``classes``."""
        import tensorflow as tf

        x = tf.convert_to_tensor(images.astype("float32"))
        for layer in self.pre:
            x = layer(x)
        index = tf.constant(classes, dtype=tf.int32)
        with tf.GradientTape() as tape:
            features, y = self.grad_model(x, training=False)
            for n, layer in enumerate(self.post):
                if n == len(self.post) - 1 and _is_softmax_dense(layer):
                    y = tf.matmul(y, layer.kernel) + layer.bias  # the score before softmax
                else:
                    y = layer(y, training=False)
            if not self.post or not _is_softmax_dense(self.post[-1]):
                y = tf.math.log(tf.clip_by_value(y, 1e-12, 1.0))
            score = tf.gather(y, index, batch_dims=1)
        grads = tape.gradient(score, features)
        # Each location's own gradient times its activation, summed over the channels
        # (HiResCAM): the same as Grad-CAM's channel-averaged gradient where the network
        # ends in global pooling, whose gradient is the same at every location; faithful
        # where it ends in dense layers (LeNet-5, AlexNet, VGG from scratch), whose
        # gradient differs per location and whose activations may be negative (tanh).
        cam = tf.nn.relu(tf.reduce_sum(features * grads, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, (self.image_size, self.image_size), method="bilinear")
        cam = np.asarray(cam)[..., 0]
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0).astype(np.float32)


def _is_softmax_dense(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.Dense) and layer.activation is keras.activations.softmax


def overlay_png(heat: np.ndarray) -> bytes:
    """A map in 0-1 as an RGBA PNG the size of the image the model saw: hot is red and
    opaque, cold blue and see-through, to lay over the image."""
    steps = len(_RAMP) - 1
    position = np.clip(heat, 0, 1) * steps
    low = np.minimum(position.astype(int), steps - 1)
    frac = (position - low)[..., None]
    rgb = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    alpha = (0.15 + 0.55 * np.clip(heat, 0, 1))[..., None] * 255
    rgba = np.concatenate([rgb, alpha], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=True)
    return buf.getvalue()
