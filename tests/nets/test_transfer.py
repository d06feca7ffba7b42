import keras
import numpy as np
import pytest

from app.nets.transfer import (
    BASE_LAYER,
    BASES,
    AugmentConfig,
    build_classifier,
    preprocessing_layer,
    unfreeze_from,
)


def test_mobilenet_depth_matches_the_declared_depth():
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    assert len(base.layers) == BASES["mobilenet_v2"].depth == 154


@pytest.mark.parametrize(
    "base, reference",
    [
        ("mobilenet_v2", keras.applications.mobilenet_v2.preprocess_input),
        ("resnet50", keras.applications.resnet50.preprocess_input),
    ],
)
def test_preprocessing_layer_equals_the_bases_preprocess_input(base, reference):
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = reference(x.copy())
    np.testing.assert_allclose(preprocessing_layer(base)(x), expected, atol=1e-4)


@pytest.mark.parametrize("base", ["mobilenet_v2", "resnet50"])
def test_classifier_takes_raw_pixels_and_returns_probabilities(base):
    model = build_classifier(base, 3, 64, weights=None, augmentation=AugmentConfig())
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not model.get_layer(BASE_LAYER).trainable


def test_two_classes_still_give_two_probabilities():
    model = build_classifier("mobilenet_v2", 2, 32, weights=None)
    probs = np.asarray(model(np.zeros((1, 32, 32, 3), "float32")))
    assert probs.shape == (1, 2)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_augmentation_acts_only_in_training():
    model = build_classifier("mobilenet_v2", 2, 32, weights=None, augmentation=AugmentConfig())
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    aug = model.get_layer("augmentation")
    np.testing.assert_array_equal(aug(x, training=False), x)
    assert not np.allclose(aug(x, training=True), x)
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))


def test_unfreeze_from_leaves_lower_layers_frozen():
    model = build_classifier("mobilenet_v2", 2, 32, weights=None)
    unfreeze_from(model, 120)
    base = model.get_layer(BASE_LAYER)
    assert base.trainable
    assert not any(layer.trainable for layer in base.layers[:120])
    assert all(layer.trainable for layer in base.layers[120:])
    with pytest.raises(ValueError, match="fine_tune_at"):
        unfreeze_from(model, 154)


def test_pretrained_weights_file_loads_into_the_base(tmp_path):
    from tests.helpers import MOBILENET_WEIGHTS

    if not MOBILENET_WEIGHTS.exists():
        pytest.skip(f"ImageNet MobileNetV2 weights not on disk at {MOBILENET_WEIGHTS}")
    model = build_classifier("mobilenet_v2", 2, 96, weights=str(MOBILENET_WEIGHTS))
    random = build_classifier("mobilenet_v2", 2, 96, weights=None)
    loaded = model.get_layer(BASE_LAYER).get_layer("Conv1").get_weights()[0]
    fresh = random.get_layer(BASE_LAYER).get_layer("Conv1").get_weights()[0]
    assert not np.allclose(loaded, fresh)


def test_inference_model_drops_augmentation_and_keeps_outputs():
    from app.nets.transfer import inference_model

    model = build_classifier("mobilenet_v2", 3, 32, weights=None, augmentation=AugmentConfig())
    plain = inference_model(model)
    assert "augmentation" not in [layer.name for layer in plain.layers]
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(plain(x), model(x, training=False), atol=1e-6)
