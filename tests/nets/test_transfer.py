import keras
import numpy as np
import pytest

from app.nets.transfer import (
    BASE_LAYER,
    BASES,
    AugmentConfig,
    batchnorm_layers,
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
        ("vgg16", keras.applications.vgg16.preprocess_input),
        ("mobilenet", keras.applications.mobilenet.preprocess_input),
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
    upper = base.layers[120:]
    assert all(layer.trainable for layer in upper if not _is_batchnorm(layer))
    assert any(_is_batchnorm(layer) for layer in upper)
    with pytest.raises(ValueError, match="fine_tune_at"):
        unfreeze_from(model, 154)


def _is_batchnorm(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


@pytest.mark.parametrize(
    "base",
    ["mobilenet_v2", pytest.param("resnet50", marks=pytest.mark.slow)],  # 12 s
)
def test_fine_tuning_sees_the_features_serving_sees(base):
    """An unfrozen base normalises a training batch as serving does (with its moving
    statistics, not the batch's), and training leaves those statistics alone."""
    model = build_classifier(base, 3, 64, weights=None, augmentation=None, dropout=0.0)
    unfreeze_from(model, 0 if base == "resnet50" else 100)
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    x = np.random.default_rng(3).uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(features(x, training=True), features(x, training=False), atol=1e-5)
    bn = batchnorm_layers(model)
    assert bn
    before = [np.array(layer.moving_mean) for layer in bn]
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, np.arange(8) % 3, epochs=2, verbose=0)
    for layer, mean in zip(bn, before, strict=True):
        np.testing.assert_array_equal(layer.moving_mean, mean)


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


@pytest.mark.parametrize(
    "base, top_stage, upper_half",
    [
        ("mobilenet_v2", "block_13_expand", "block_6_expand"),
        ("resnet50", "conv5_block1_1_conv", "conv4_block1_1_conv"),
        ("vgg16", "block5_conv1", "block4_conv1"),
        ("mobilenet", "conv_pad_12", "conv_pad_6"),
        ("efficientnet_b0", "block6a_expand_conv", "block4a_expand_conv"),
    ],
)
def test_each_pretrained_base_declares_its_depth_and_block_starts(base, top_stage, upper_half):
    from app.nets.transfer import build_base

    net = build_base(base, 64, weights=None)
    spec = BASES[base]
    assert len(net.layers) == spec.depth
    assert net.layers[spec.top_stage].name == top_stage
    assert net.layers[spec.upper_half].name == upper_half


@pytest.mark.parametrize(
    "base, application",
    [
        ("vgg16", keras.applications.VGG16),
        ("mobilenet", keras.applications.MobileNet),
        ("efficientnet_b0", keras.applications.EfficientNetB0),
    ],
)
def test_keras_weights_file_gives_our_base_the_same_features(tmp_path, base, application):
    """The path ImageNet weights take: Keras' network loads the file, ours copies it."""
    from app.nets.transfer import build_base

    shape = (64, 64, 3)
    source = application(include_top=False, weights=None, input_shape=shape)
    for i, weight in enumerate(source.weights):  # recognisable values, not the initialiser's
        weight.assign(np.random.default_rng(i).normal(0, 0.05, weight.shape).astype(weight.dtype))
    path = tmp_path / f"{base}.weights.h5"
    source.save_weights(path)
    ours = build_base(base, 64, weights=str(path))
    reference = application(include_top=False, weights=str(path), input_shape=shape)
    x = np.random.default_rng(9).uniform(-1, 1, (2, *shape)).astype("float32")
    if base == "efficientnet_b0":
        # Both normalise their own input; ours with the ImageNet statistics, Keras' with
        # what its file holds. Compare after the normalisation.
        x = x * 127.5 + 127.5
        norm = next(la for la in reference.layers if isinstance(la, keras.layers.Normalization))
        ours.get_layer("normalization").set_weights(norm.get_weights())
        ours.get_layer("normalization").finalize_state()
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-4, rtol=1e-4)


def test_from_scratch_networks_with_a_dense_top_keep_it():
    model = build_classifier("lenet5", 4, 32, weights=None, from_scratch=True)
    net = model.get_layer(BASE_LAYER)
    assert [la.name for la in net.layers[-3:]] == ["c5_dense", "f6_dense", "predictions"]
    assert model.output_shape == (None, 4)


def test_a_network_without_imagenet_weights_refuses_them():
    from app.nets.transfer import build_base

    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_base("alexnet", 96, weights="imagenet")
