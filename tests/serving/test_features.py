"""The features the nearest-neighbour "unknown" score takes (app/serving/features.py): what
the classifier's last layer takes, for a transfer head and for a network that ends in its
own dense layers."""

from __future__ import annotations

import numpy as np
import pytest

from app.nets.transfer import build_classifier
from app.serving.features import classifier_layer, features_of


@pytest.mark.parametrize(
    ("name", "size", "width"),
    [("lenet5", 32, 84), ("alexnet", 67, 4096)],  # their own dense tops: F6, and FC7
)
def test_the_features_are_what_the_last_dense_layer_takes(name, size, width):
    model = build_classifier(name, 3, size, weights=None, from_scratch=True)
    layer = classifier_layer(model)
    assert layer.__class__.__name__ == "Dense" and layer.units == 3
    x = np.random.default_rng(0).integers(0, 256, (4, size, size, 3)).astype(np.float32)
    probs, features = features_of(model, [x])
    assert features.shape == (4, width)
    assert np.allclose(probs, model.predict_on_batch(x), atol=1e-5)
    # The scores are that layer applied to the features.
    kernel, bias = layer.get_weights()
    logits = features @ kernel + bias
    expected = np.exp(logits - logits.max(1, keepdims=True))
    assert np.allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-4)


def test_a_transfer_head_gives_its_pooled_features():
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(5, 3)(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="predictions")(x))
    assert classifier_layer(model).name == "predictions"
    probs, features = features_of(model, [np.ones((2, 16, 16, 3), np.float32)])
    assert features.shape == (2, 5) and probs.shape == (2, 2)
