"""The case-study networks: parameter counts at their papers' sizes, shapes at small sizes,
and, where Keras has the same network, the same outputs with the same weights."""

import keras
import numpy as np
import pytest

from app.nets.alexnet import AlexNet
from app.nets.build import build_network
from app.nets.catalog import ARCHITECTURES
from app.nets.common import copy_weights
from app.nets.efficientnet import EfficientNetB0, round_filters
from app.nets.inception import GoogLeNet, inception_module
from app.nets.lenet import LeNet5
from app.nets.mobilenet import MobileNet
from app.nets.vgg import VGG16


@pytest.mark.parametrize(
    "name, expected",
    [
        # 6@5x5 (156) + 16@5x5 (2,416) + 400x120 (48,120) + 120x84 (10,164) + 84x10 (850).
        ("lenet5", 61_706),
        ("alexnet", 60_965_224),  # the paper's two towers at 227x227
        ("vgg16", 138_357_544),
        ("resnet50", 25_636_712),
        ("mobilenet", 4_253_864),
        ("mobilenet_v2", 3_538_984),
        ("efficientnet_b0", 5_330_571),
    ],
)
def test_parameter_counts_are_the_papers_and_keras_figures(name, expected):
    # test_catalogue_figures_are_the_builders checks the catalogue against the builders.
    assert ARCHITECTURES[name].parameters == expected


def test_one_tower_alexnet_has_more_parameters():
    assert AlexNet((227, 227, 3), groups=1).count_params() == 62_378_344


def test_googlenet_has_about_the_papers_6_8_million_parameters():
    # Table 1 of the paper adds up to 6.8 M in rounded thousands without biases; every
    # weight and bias of the layers it lists (no auxiliary classifiers) is 7.0 M.
    count = ARCHITECTURES["googlenet"].parameters
    assert count == 6_998_552
    assert abs(count - 6.8e6) / 6.8e6 < 0.05


def _compare_with_keras(ours: keras.Model, reference: keras.Model, x: np.ndarray, **kw) -> None:
    # Same weights in the same order: Keras' own weights files load into ours directly.
    assert [w.shape for w in ours.weights] == [w.shape for w in reference.weights]
    copy_weights(reference, ours, **kw)
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-4, rtol=1e-4)


def _pixels(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)).astype("float32")


@pytest.mark.parametrize("include_top", [True, False])
def test_vgg16_computes_what_keras_vgg16_computes(include_top):
    shape = (32, 32, 3)
    _compare_with_keras(
        VGG16(shape, classes=7, include_top=include_top),
        keras.applications.VGG16(
            weights=None, input_shape=shape, classes=7, include_top=include_top
        ),
        _pixels(32),
    )


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_mobilenet_computes_what_keras_mobilenet_computes(alpha):
    shape = (64, 64, 3)
    ours = MobileNet(shape, alpha=alpha, classes=5)
    reference = keras.applications.MobileNet(
        weights=None, input_shape=shape, alpha=alpha, classes=5
    )
    # Moving statistics away from 0 and 1, so that a BatchNorm wired wrongly shows.
    for layer in reference.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.1, 0.1, n))
            layer.moving_variance.assign(np.linspace(0.5, 1.5, n))
    _compare_with_keras(ours, reference, _pixels(64))


def test_efficientnet_b0_computes_what_keras_efficientnet_b0_computes():
    shape = (64, 64, 3)
    ours = EfficientNetB0(shape, classes=4)
    reference = keras.applications.EfficientNetB0(weights=None, input_shape=shape, classes=4)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    # Keras names its input normalisation automatically; ours calls it "normalization".
    [norm] = [la for la in reference.layers if isinstance(la, keras.layers.Normalization)]
    assert [w.shape for w in ours.weights] == [w.shape for w in reference.weights]
    copy_weights(reference, ours, skip=(keras.layers.Normalization,))
    ours.get_layer("normalization").set_weights(norm.get_weights())
    ours.get_layer("normalization").finalize_state()
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-4, rtol=1e-4)


def test_efficientnet_normalises_with_the_imagenet_statistics():
    ours = EfficientNetB0((32, 32, 3), include_top=False)
    stem = keras.Model(ours.input, ours.get_layer("normalization").output)
    pixel = np.full((1, 32, 32, 3), [124.0, 116.0, 104.0], "float32")
    expected = (pixel / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(stem(pixel), expected, atol=1e-5)


def test_compound_scaling_rounds_channels_to_multiples_of_eight():
    assert round_filters(32, 1.0) == 32
    assert round_filters(32, 1.1) == 32  # B2's width: 35.2 rounds to 32 (within 10%)
    assert round_filters(1280, 1.4) == 1792  # B4
    assert round_filters(16, 1.8) == 32  # B5: 28.8 -> 32


def test_inception_module_concatenates_its_four_branches():
    x = keras.Input((28, 28, 192))
    y = inception_module(x, 64, 96, 128, 16, 32, 32, name="inception_3a")
    model = keras.Model(x, y)
    assert model.output_shape == (None, 28, 28, 256)
    # The 1x1 reductions are why it is cheap: 192 -> 16 before the 5x5.
    assert model.get_layer("inception_3a_5x5").count_params() == 5 * 5 * 16 * 32 + 32


@pytest.mark.parametrize(
    "build, shape, out",
    [
        (lambda s: LeNet5(s, classes=6), (32, 32, 1), (None, 6)),
        (lambda s: LeNet5(s, classes=6, pooling="avg"), (64, 64, 3), (None, 6)),
        (lambda s: LeNet5(s, include_top=False), (32, 32, 3), (None, 5, 5, 16)),
        (lambda s: AlexNet(s, classes=6), (67, 67, 3), (None, 6)),
        (lambda s: AlexNet(s, include_top=False, lrn=False), (227, 227, 3), (None, 6, 6, 256)),
        (lambda s: GoogLeNet(s, classes=6), (64, 64, 3), (None, 6)),
        (lambda s: GoogLeNet(s, include_top=False), (64, 64, 3), (None, 2, 2, 1024)),
        (lambda s: VGG16(s, include_top=False, pooling="avg"), (32, 32, 3), (None, 512)),
        (lambda s: MobileNet(s, include_top=False), (64, 64, 3), (None, 2, 2, 1024)),
        (lambda s: EfficientNetB0(s, include_top=False), (64, 64, 3), (None, 2, 2, 1280)),
    ],
)
def test_output_shapes_at_small_sizes(build, shape, out):
    model = build(shape)
    assert model.output_shape == out
    y = model(np.zeros((1, *shape), "float32"))
    assert tuple(y.shape[1:]) == out[1:]


def test_local_response_normalisation_matches_tensorflow():
    import tensorflow as tf

    from app.nets.common import LocalResponseNormalization

    x = np.random.default_rng(2).uniform(0, 20, (2, 5, 5, 12)).astype("float32")
    expected = tf.nn.local_response_normalization(
        x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75
    )
    np.testing.assert_allclose(LocalResponseNormalization()(x), expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_catalogue_figures_are_the_builders(name):
    arch = ARCHITECTURES[name]
    classes = 10 if name == "lenet5" else 1000
    channels = 1 if name == "lenet5" else 3
    full = build_network(name, (arch.input_size, arch.input_size, channels), classes=classes)
    assert full.count_params() == arch.parameters
    # The smallest input it accepts still gives a prediction.
    small = build_network(name, (arch.min_size, arch.min_size, 3), classes=3)
    assert small(np.zeros((1, arch.min_size, arch.min_size, 3), "float32")).shape == (1, 3)
