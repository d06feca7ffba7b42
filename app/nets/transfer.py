"""Classifiers on a pretrained base, built with the Functional API.

Every model here takes raw pixels (`float32` in [0, 255], shape `(batch, S, S, 3)`) and
returns class probabilities `(batch, classes)`: augmentation and the base's preprocessing
live inside the model, so serving feeds it exactly what training fed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from app.nets.build import build_network, keras_application
from app.nets.catalog import ARCHITECTURES, BASES
from app.nets.common import copy_weights
from app.nets.resnet import ResNet50

BASE_LAYER = "base"
IMAGENET_CLASSES = 1000


# Training images per class from which the transfer strategy unfreezes more of the base
# (below the first, only the head is trained).
FINE_TUNE_TOP_FROM = 15
FINE_TUNE_HALF_FROM = 400
FINE_TUNE_ALL_FROM = 1500


@dataclass(frozen=True)
class FineTuneChoice:
    layer: int | None  # None: no fine-tuning, the head alone
    reason: str


def choose_fine_tune_at(base: str, images_per_class: float) -> FineTuneChoice:
    """How much of a pretrained base to fine-tune, from the training images per class.

    The usual advice for transfer learning: with little data train only the new head
    (the pretrained features are better than what a few images can teach); with more,
    unfreeze the last stage, whose features are the most specific to the original task;
    with a lot, unfreeze more, then all of it. Measured on the SIGNS photos, fine-tuning the
    last stage already helps at 24 images per class (held-out accuracy 0.875 against 0.847
    for the head alone, with BatchNorm frozen while fine-tuning), and the trainer keeps
    the head's weights when fine-tuning does not beat them; only a handful of images per
    class, where a validation set cannot tell better from worse, trains the head alone.
    """
    spec = BASES[base]
    n = images_per_class
    if n < FINE_TUNE_TOP_FROM:
        return FineTuneChoice(
            None,
            f"{n:.0f} training images per class (under {FINE_TUNE_TOP_FROM}): the head alone,"
            " on the pretrained features",
        )
    if n < FINE_TUNE_HALF_FROM:
        return FineTuneChoice(
            spec.top_stage,
            f"{n:.0f} training images per class ({FINE_TUNE_TOP_FROM}-{FINE_TUNE_HALF_FROM - 1}):"
            f" the last stage of {base}, from layer {spec.top_stage} of {spec.depth}",
        )
    if n < FINE_TUNE_ALL_FROM:
        return FineTuneChoice(
            spec.upper_half,
            f"{n:.0f} training images per class ({FINE_TUNE_HALF_FROM}-{FINE_TUNE_ALL_FROM - 1}):"
            f" the upper half of {base}, from layer {spec.upper_half} of {spec.depth}",
        )
    return FineTuneChoice(
        0, f"{n:.0f} training images per class ({FINE_TUNE_ALL_FROM} or more): all of {base}"
    )


@keras.saving.register_keras_serializable(package="convserve")
class CaffePreprocess(layers.Layer):
    """`keras.applications.resnet50.preprocess_input` as a layer: RGB to BGR, minus the
    ImageNet channel means. Being a layer, it is saved with the model."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor(self.MEAN_BGR, dtype=inputs.dtype)


def preprocessing_layer(base: str, from_scratch: bool = False) -> layers.Layer:
    """The base's own ``preprocess_input``, as a layer.

    MobileNet and MobileNetV2 scale to [-1, 1] (``x / 127.5 - 1``); the pretrained
    ResNet-50 and VGG-16 expect Caffe-style BGR minus means; EfficientNet normalises inside
    the network. Networks trained from scratch take ``x / 255`` as in the course.
    """
    if base in ("mobilenet_v2", "mobilenet"):
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
    if base == "efficientnet_b0":
        return layers.Identity(name="preprocess")
    if base not in ARCHITECTURES:
        raise ValueError(f"unknown base {base!r}; choose one of {sorted(ARCHITECTURES)}")
    if base in ("resnet50", "vgg16") and not from_scratch:
        return CaffePreprocess(name="preprocess")
    return layers.Rescaling(1.0 / 255.0, name="preprocess")


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes applied to training images (each 0 or ``None`` to leave it out)."""

    flip: str | None = "horizontal"  # "horizontal", "vertical", "horizontal_and_vertical"
    rotation: float = 0.05  # a fraction of a full turn, either way
    zoom: float = 0.1  # in or out, a fraction of the side
    translation: float = 0.1  # a fraction of the side, either way
    contrast: float = 0.1  # a fraction, either way
    brightness: float = 0.1  # a fraction of the pixel range, either way


def build_augmentation(config: AugmentConfig | None = None) -> keras.Sequential | None:
    """Random flips, rotations, zoom, shifts, contrast and brightness as a `Sequential`.

    Keras' random layers act only when called with ``training=True``, so inside a model
    they change nothing at inference. Inputs are raw pixels in [0, 255], and the colour
    layers are told so.
    """
    config = config or AugmentConfig()
    steps: list[layers.Layer] = []
    if config.flip:
        steps.append(layers.RandomFlip(config.flip))
    if config.rotation:
        steps.append(layers.RandomRotation(config.rotation))
    if config.zoom:
        steps.append(layers.RandomZoom(config.zoom))
    if config.translation:
        steps.append(layers.RandomTranslation(config.translation, config.translation))
    if config.contrast:
        steps.append(layers.RandomContrast(config.contrast, value_range=(0, 255)))
    if config.brightness:
        steps.append(layers.RandomBrightness(config.brightness, value_range=(0, 255)))
    return keras.Sequential(steps, name="augmentation") if steps else None


def _resolve_weights(weights: str | None) -> str | None:
    return None if weights in (None, "", "none") else weights


def build_base(
    base: str, image_size: int, weights: str | None = None, from_scratch: bool = False
) -> keras.Model:
    """The convolutional base without its top, named ``"base"``.

    Args:
        base: a key of ``ARCHITECTURES``; with ``weights``, one of ``BASES``.
        image_size: side of the square input.
        weights: ``"imagenet"`` (Keras' download and cache), a path to a weights file, or
            ``None``/``"none"`` for random initialisation.
        from_scratch: ignore ``weights`` (random initialisation).

    Returns:
        A model `(batch, S, S, 3) -> (batch, h, w, channels)`.
    """
    weights = None if from_scratch else _resolve_weights(weights)
    shape = (image_size, image_size, 3)
    if weights is not None and base not in BASES:
        raise ValueError(f"{base} has no ImageNet weights in Keras; train it from scratch")
    if base == "mobilenet_v2":
        return keras.applications.MobileNetV2(
            input_shape=shape, include_top=False, weights=weights, name=BASE_LAYER
        )
    # A network trained from scratch on a small set needs BatchNorm statistics with a
    # shorter memory (see ResNet50's bn_momentum).
    net = build_network(
        base,
        shape,
        include_top=False,
        network_name=BASE_LAYER,
        bn_momentum=0.9 if weights is None else 0.99,
    )
    if weights is not None:
        reference = keras_application(base)(include_top=False, weights=weights, input_shape=shape)
        # EfficientNet's input normalisation: ours holds the ImageNet statistics already;
        # Keras' file stores them in a form only its own network reads right.
        copy_weights(reference, net, skip=(layers.Normalization,))
    return net


def build_classifier(
    base: str,
    num_classes: int,
    image_size: int,
    weights: str | None = None,
    augmentation: AugmentConfig | None = None,
    from_scratch: bool = False,
    dropout: float = 0.2,
) -> keras.Model:
    """Raw pixels -> augmentation -> preprocessing -> base -> pooling -> dropout -> dense.

    A pretrained base is frozen and called with ``training=False``, so that its BatchNorm
    layers keep their ImageNet statistics even after it is unfrozen for fine-tuning (the
    keras-io transfer-learning recipe). A base trained from scratch is trainable and in
    training mode.

    A network trained from scratch whose paper ends in dense layers (LeNet-5, AlexNet,
    VGG-16) keeps them, with ``num_classes`` outputs; the others end in global pooling and
    one classifier, as this head does.

    Args:
        base: a key of ``ARCHITECTURES`` (of ``BASES`` unless ``from_scratch``).
        num_classes: number of output classes (two or more; always softmax).
        image_size: side of the square input.
        weights: see `build_base`.
        augmentation: augmentation to apply in training, ``None`` for none.
        from_scratch: train the whole network from random initialisation.
        dropout: dropout rate before the classifier.

    Returns:
        A model `(batch, S, S, 3)` raw pixels -> `(batch, num_classes)` probabilities.
    """
    if num_classes < 2:
        raise ValueError("a classifier needs at least two classes")
    shape = (image_size, image_size, 3)
    inputs = keras.Input(shape=shape, name="image")
    x = inputs
    augment = build_augmentation(augmentation) if augmentation is not None else None
    if augment is not None:
        x = augment(x)
    x = preprocessing_layer(base, from_scratch)(x)
    if from_scratch and ARCHITECTURES[base].top == "dense":
        own = build_network(base, shape, classes=num_classes, network_name=BASE_LAYER)
        return keras.Model(inputs, own(x), name=f"{base}_classifier")
    net = build_base(base, image_size, weights, from_scratch)
    if from_scratch:
        x = net(x)
    else:
        net.trainable = False
        x = net(x, training=False)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"{base}_classifier")


def unfreeze_from(model: keras.Model, fine_tune_at: int) -> None:
    """Make the base trainable from layer ``fine_tune_at`` on; the layers below stay frozen.

    BatchNormalization layers stay frozen everywhere, so they keep normalising with their
    ImageNet statistics while the layers around them train. Calling the base with
    ``training=False`` is not enough for that in Keras 3: a functional model passes the
    ``training`` of its own call (true in ``fit``) to every layer inside it, overriding the
    value given where the base was called. An unfrozen BatchNormalization layer then
    normalises each training batch with that batch's statistics and serving with its
    moving ones: on SIGNS the features of the same photos differed by as much as their
    mean, and the first fine-tuning epoch's training accuracy fell from 0.95 to 0.5. A
    frozen one runs in inference mode whatever ``training`` says.

    The caller must compile the model again for the change to take effect.
    """
    base = model.get_layer(BASE_LAYER)
    if not 0 <= fine_tune_at < len(base.layers):
        raise ValueError(f"fine_tune_at must be between 0 and {len(base.layers) - 1} for this base")
    base.trainable = True
    for layer in base.layers[:fine_tune_at]:
        layer.trainable = False
    for layer in batchnorm_layers(base):
        layer.trainable = False


def batchnorm_layers(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer in ``layer``, nested ones included."""
    found = [layer] if isinstance(layer, keras.layers.BatchNormalization) else []
    for inner in getattr(layer, "layers", []):
        found += batchnorm_layers(inner)
    return found


def build_imagenet_classifier(arch: str, image_size: int, weights: str | None) -> keras.Model:
    """The 1000-class ImageNet classifier that a fresh registry serves as version 1.

    ``resnet50`` is our ResNet-50 from its blocks, with the weights of Keras' ImageNet
    ResNet-50 copied in; ``mobilenet_v2`` is Keras' MobileNetV2 classifier. Both take raw
    pixels.
    """
    weights = _resolve_weights(weights)
    shape = (image_size, image_size, 3)
    if arch == "resnet50":
        net = ResNet50(input_shape=shape, name="resnet50_imagenet")
        if weights is not None:
            copy_weights(keras.applications.ResNet50(weights=weights, input_shape=shape), net)
    elif arch == "mobilenet_v2":
        net = keras.applications.MobileNetV2(
            input_shape=shape, weights=weights, name="mobilenet_v2_imagenet"
        )
    else:
        raise ValueError(f"no ImageNet classifier for {arch!r}")
    inputs = keras.Input(shape=shape, name="image")
    outputs = net(preprocessing_layer(arch)(inputs))
    return keras.Model(inputs, outputs, name=f"{arch}_imagenet")


def load_classifier(path: str | Path) -> keras.Model:
    """Load a saved classifier (our custom layers are registered by importing this module)."""
    return keras.saving.load_model(path, compile=False)


def inference_model(model: keras.Model) -> keras.Model:
    """The classifier without its augmentation layer, for export to another runtime.

    Augmentation does nothing at inference, but its random ops stay in an exported graph,
    and runtimes such as OpenVINO cannot convert them. Our classifiers are a chain of
    layers, so the chain is rebuilt without that one (sharing the weights).
    """
    names = [layer.name for layer in model.layers]
    if "augmentation" not in names:
        return model
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    x = inputs
    for layer in model.layers[1:]:
        if layer.name != "augmentation":
            x = layer(x, training=False) if layer.name == BASE_LAYER else layer(x)
    return keras.Model(inputs, x, name=model.name)
