"""Every architecture of the catalogue trains on an upload-sized folder, is written to the
registry and predicts the same after loading back."""

import typing

import numpy as np
import pytest
from PIL import Image

from app.nets.catalog import ARCHITECTURES
from app.nets.transfer import load_classifier
from app.storage.registry import ModelRegistry
from app.training.params import Base, TrainParams
from app.training.trainer import train
from tests.helpers import make_dataset


def test_training_accepts_exactly_the_catalogue():
    assert set(typing.get_args(Base)) == set(ARCHITECTURES)


@pytest.mark.parametrize(
    "base, size",
    [
        ("lenet5", None),  # its own default: 32
        pytest.param("mobilenet", 32, marks=pytest.mark.slow),
        pytest.param("alexnet", 67, marks=pytest.mark.slow),
        ("vgg16", 32),
        pytest.param("googlenet", 32, marks=pytest.mark.slow),
        pytest.param("efficientnet_b0", 32, marks=pytest.mark.slow),
    ],
)
def test_each_architecture_trains_and_round_trips(tmp_path, base, size):
    data = make_dataset(tmp_path / "data", classes=("hstripes", "vstripes"), per_class=12)
    registry = ModelRegistry(tmp_path / "models")
    given = {} if size is None else {"image_size": size}
    params = TrainParams(
        base=base, epochs=1, fine_tune_epochs=1, batch_size=8, refit="off", **given
    )
    # Networks without ImageNet weights train from scratch without being told.
    assert params.from_scratch == (not ARCHITECTURES[base].pretrained)
    result = train(data, "arch", params, registry, tmp_path / "ws", weights=None)
    meta = registry.metadata("arch", result.version)
    assert meta["base"] == base
    assert meta["image_size"] == (size or ARCHITECTURES[base].default_size)
    assert meta["class_names"] == ["hstripes", "vstripes"]
    model = load_classifier(registry.model_path("arch", result.version))
    side = meta["image_size"]
    image = Image.open(next((data / "vstripes").iterdir())).convert("RGB").resize((side, side))
    x = np.asarray(image, "float32")[None]
    probabilities = np.asarray(model(x))
    assert probabilities.shape == (1, 2)
    np.testing.assert_allclose(probabilities.sum(), 1.0, atol=1e-5)


@pytest.mark.slow
def test_our_resnet50_trains_from_scratch_and_round_trips(tmp_path):
    # The course's network from scratch, as `train --base resnet50 --from-scratch` runs it
    # (BatchNorm statistics recomputed at the end); its accuracy on the real photos is
    # bench/accuracy.py's resnet50_scratch run.
    data = make_dataset(tmp_path / "data", classes=("hstripes", "vstripes"), per_class=12)
    registry = ModelRegistry(tmp_path / "models")
    params = TrainParams(
        base="resnet50", from_scratch=True, image_size=32, epochs=1, batch_size=8, refit="off"
    )
    result = train(data, "scratch", params, registry, tmp_path / "ws", weights=None)
    meta = registry.metadata("scratch", result.version)
    assert meta["base"] == "resnet50" and meta["pretrained"] is None
    assert "batchnorm" in meta["training"]["phases"][0]
    model = load_classifier(registry.model_path("scratch", result.version))
    image = Image.open(next((data / "vstripes").iterdir())).convert("RGB").resize((32, 32))
    probabilities = np.asarray(model(np.asarray(image, "float32")[None]))
    assert probabilities.shape == (1, 2)
    np.testing.assert_allclose(probabilities.sum(), 1.0, atol=1e-5)


def test_network_without_imagenet_weights_cannot_be_fine_tuned():
    with pytest.raises(ValueError, match="no ImageNet weights"):
        TrainParams(base="googlenet", from_scratch=False)


def test_input_smaller_than_the_network_takes_is_refused():
    with pytest.raises(ValueError, match="at least 67 pixels"):
        TrainParams(base="alexnet", image_size=64)
