"""Real photos (the SIGNS set) and real ImageNet weights; slow, and run in CI."""

import sys
from pathlib import Path

import pytest

from app.storage.registry import ModelRegistry
from app.training.evaluate import evaluate_directory
from app.training.params import TrainParams
from app.training.trainer import Hooks, train
from tests.helpers import MOBILENET_WEIGHTS, SIGNS_DIR

ROOT = Path(__file__).resolve().parents[2]
# The target for 30 photos per class, a little under what the defaults measured on this
# subset (bench/accuracy.py's subset 1, through /finetune): 0.944 in 4.0 min with the
# refit (0.931-0.944 on three subsets); 216 held-out photos, so one photo is 0.5%. The
# defaults on all 864 photos (0.986 in 8.9 min) are the benchmark's to measure: a
# 10-minute run would be a quarter of this suite's time.
HELD_OUT_FLOOR_30 = 0.90
# Measured 0.931 (bench, with the learning rate decayed over the 10 epochs); at a fixed
# rate 0.84-0.92, ending wherever CPU thread scheduling left them (the seed fixes the
# data, not the arithmetic). The floor says the recipe learns (chance is 0.17), not how
# well: bench/accuracy.py measures that. 4.6 minutes on a 2-core AVX2-only machine
# with TensorFlow's oneDNN kernels on (9.6 without them).
RESNET_HELD_OUT_FLOOR = 0.80
# LeNet-5 from scratch at 64 px (bench/accuracy.py's split, 30-40 s, early stopping): 0.940,
# then 0.917, 0.903, 0.907, 0.917 in four runs on an idle machine and 0.866 in a CI run beside
# other work; the runs differ by CPU thread scheduling, not the data. The floor says it learns
# from scratch (chance is 0.17) with room for that spread.
LENET_HELD_OUT_FLOOR = 0.83

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SIGNS_DIR.is_dir(), reason=f"SIGNS photos not on disk at {SIGNS_DIR}"),
]


def _report(result, lines):
    for line in lines:
        if line.startswith(("epoch", "validation")):
            print(line)
    print(f"total {result.seconds:.0f}s")


def _held_out_split(tmp_path):
    """bench/accuracy.py's seeded, stratified split: 20% of the photos never trained on,
    the pool training draws from, and the pool's first seeded subset of 30 per class."""
    sys.path.insert(0, str(ROOT / "bench"))
    from accuracy import split_signs, subset

    held, pool, _ = split_signs(tmp_path / "split", SIGNS_DIR)
    return held, pool, subset(pool, tmp_path / "split", 30, 1)


def _held_out_accuracy(registry, name, version, held, tmp_path):
    return evaluate_directory(registry, name, version, held, tmp_path / "eval")["accuracy"]


def _train_on_signs(tmp_path, params, weights=None, name="signs", per_class_30=False):
    """Train on bench/accuracy.py's 80% (or its 30 photos per class) and score on its
    held-out 20%: the training result, the registry and the held-out accuracy."""
    held, pool, small = _held_out_split(tmp_path)
    if per_class_30:
        pool = small
    lines: list[str] = []
    registry = ModelRegistry(tmp_path / "models")
    hooks = Hooks(log=lines.append)
    result = train(pool, name, params, registry, tmp_path / "ws", weights=weights, hooks=hooks)
    _report(result, lines)
    accuracy = _held_out_accuracy(registry, name, result.version, held, tmp_path)
    print(f"{params.base}: held-out accuracy {accuracy:.4f}")
    return result, registry, accuracy


@pytest.mark.skipif(not MOBILENET_WEIGHTS.exists(), reason="ImageNet MobileNetV2 weights missing")
def test_mobilenet_v2_with_the_defaults_on_30_photos_per_class_it_never_saw(tmp_path):
    result, registry, accuracy = _train_on_signs(
        tmp_path, TrainParams(), str(MOBILENET_WEIGHTS), per_class_30=True
    )
    training = registry.metadata("signs", result.version)["training"]
    assert training["fine_tune_at"]["value"] == 116  # 24 training photos per class
    # Refit on all 180 photos once the validation split had chosen the epochs.
    assert training["refit"]["done"] is True and training["refit"]["images"] == 180
    assert result.seconds < 10 * 60
    assert accuracy >= HELD_OUT_FLOOR_30


def test_our_resnet50_from_scratch_with_the_course_recipe(tmp_path):
    # The course: inputs / 255, Adam at 1e-3, 10 epochs, batch 32, 64x64 photos, no
    # augmentation (plus our early stopping and learning-rate schedule).
    params = TrainParams(
        base="resnet50",
        from_scratch=True,
        image_size=64,
        epochs=10,
        batch_size=32,
        learning_rate=1e-3,
        augment=False,
    )
    _, _, accuracy = _train_on_signs(tmp_path, params, name="signs-resnet")
    assert accuracy >= RESNET_HELD_OUT_FLOOR


def test_lenet5_from_scratch_on_photos_it_never_saw(tmp_path):
    # No ImageNet weights exist for LeNet-5: it trains from scratch without being told.
    params = TrainParams(base="lenet5", image_size=64)
    assert params.from_scratch
    result, registry, accuracy = _train_on_signs(tmp_path, params)
    assert registry.metadata("signs", result.version)["base"] == "lenet5"
    assert accuracy >= LENET_HELD_OUT_FLOOR


def _keras_weights(base: str) -> Path | None:
    """Keras' ImageNet weights file for ``base``, in ../shared/weights or Keras' cache."""
    import os

    from app.nets.catalog import ARCHITECTURES

    name = ARCHITECTURES[base].keras_weights
    assert name is not None
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    for folder in (MOBILENET_WEIGHTS.parent, home / "models"):
        if (folder / name).is_file():
            return folder / name
    return None


# Transfer with the defaults on the other pretrained bases. Only MobileNetV2's ImageNet
# weights are in ../shared/weights, so these skip there; a machine with Keras' files runs
# them (a transfer on ImageNet features should do at least as well as LeNet-5 from scratch).
@pytest.mark.parametrize("base", ["efficientnet_b0", "mobilenet", "vgg16"])
def test_transfer_on_another_pretrained_base(tmp_path, base):
    weights = _keras_weights(base)
    if weights is None:
        pytest.skip(f"the ImageNet weights of {base} are not on this machine (no download)")
    _, _, accuracy = _train_on_signs(tmp_path, TrainParams(base=base), str(weights))
    assert accuracy >= LENET_HELD_OUT_FLOOR
