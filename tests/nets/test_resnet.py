import keras
import numpy as np
import pytest

from app.nets.resnet import ResNet50, copy_weights
from app.nets.transfer import BASES


def test_full_resnet50_matches_keras_parameter_count_and_outputs():
    ours = ResNet50(input_shape=(224, 224, 3), classes=1000)
    assert ours.count_params() == 25_636_712
    reference = keras.applications.ResNet50(weights=None)
    copy_weights(reference, ours)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-4)


def test_weights_list_in_the_same_order_as_keras():
    # Same order means Keras' own ImageNet files load with load_weights, not only by name.
    ours = ResNet50(input_shape=(64, 64, 3), include_top=False)
    reference = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    assert [w.shape for w in ours.weights] == [w.shape for w in reference.weights]
    assert len(ours.layers) == BASES["resnet50"].depth


def test_course_head_on_64px_signs_has_the_course_parameter_count():
    base = ResNet50(input_shape=(64, 64, 3), include_top=False)
    x = keras.layers.AveragePooling2D((2, 2))(base.output)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(6, activation="softmax")(x)
    model = keras.Model(base.input, outputs)
    assert model.count_params() == 23_600_006
    assert model.output_shape == (None, 6)


@pytest.mark.parametrize("pooling, shape", [(None, (None, 2, 2, 2048)), ("avg", (None, 2048))])
def test_headless_output_shapes(pooling, shape):
    assert ResNet50((64, 64, 3), include_top=False, pooling=pooling).output_shape == shape
