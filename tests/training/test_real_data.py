"""Real photos (the SIGNS set) and real ImageNet weights; slow, and run in CI."""

import pytest

from app.registry import ModelRegistry
from app.training.params import TrainParams
from app.training.trainer import Hooks, train
from tests.helpers import MOBILENET_WEIGHTS, SIGNS_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SIGNS_DIR.is_dir(), reason=f"SIGNS photos not on disk at {SIGNS_DIR}"),
]


def _report(result, lines):
    for line in lines:
        if line.startswith(("epoch", "validation")):
            print(line)
    print(f"total {result.seconds:.0f}s")


def _phase_end(history, phase):
    return [h for h in history if h["phase"] == phase][-1]["val_accuracy"]


@pytest.mark.skipif(not MOBILENET_WEIGHTS.exists(), reason="ImageNet MobileNetV2 weights missing")
def test_mobilenet_v2_transfer_then_fine_tune_reaches_090(tmp_path):
    params = TrainParams(
        base="mobilenet_v2",
        image_size=160,
        epochs=10,
        fine_tune_epochs=10,
        fine_tune_at=120,
        batch_size=32,
        validation_split=0.2,
        seed=42,
    )
    lines: list[str] = []
    result = train(
        SIGNS_DIR,
        "signs",
        params,
        ModelRegistry(tmp_path / "models"),
        tmp_path / "ws",
        weights=str(MOBILENET_WEIGHTS),
        hooks=Hooks(log=lines.append),
    )
    _report(result, lines)
    print(
        "after head:",
        _phase_end(result.history, "head"),
        "after fine-tuning:",
        _phase_end(result.history, "fine_tune"),
    )
    assert result.metrics["images"] == 216
    assert result.metrics["accuracy"] >= 0.90


def test_our_resnet50_from_scratch_with_the_course_recipe_reaches_080(tmp_path):
    # The course: inputs / 255, Adam, 10 epochs, batch 32, 64x64 photos, no augmentation.
    params = TrainParams(
        base="resnet50",
        from_scratch=True,
        image_size=64,
        epochs=10,
        batch_size=32,
        augment=False,
        validation_split=0.2,
        seed=42,
    )
    lines: list[str] = []
    result = train(
        SIGNS_DIR,
        "signs-resnet",
        params,
        ModelRegistry(tmp_path / "models"),
        tmp_path / "ws",
        weights=None,
        hooks=Hooks(log=lines.append),
    )
    _report(result, lines)
    assert result.metrics["accuracy"] >= 0.80
