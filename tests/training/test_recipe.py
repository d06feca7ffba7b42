"""The training recipe: transfer strategy, class weights, early stopping that keeps the
best weights, the time budget and the augmentation settings."""

import json
import time

import keras
import numpy as np
import pytest

from app.data.datasets import DatasetSummary
from app.nets.transfer import BASES, build_augmentation, choose_fine_tune_at
from app.storage.registry import ModelRegistry
from app.training.params import TrainParams
from app.training.trainer import (
    MIN_RATE_FRACTION,
    Hooks,
    _BestEpoch,
    _BudgetDecay,
    _Deadline,
    _fine_tune_choice,
    _stop_reason,
    augment_config,
    class_weights,
    train,
)
from tests.helpers import MOBILENET_WEIGHTS, make_dataset


@pytest.mark.parametrize(
    "base, per_class, layer",
    [
        ("mobilenet_v2", 8, None),  # 10 photos a class, 20% held for validation
        ("mobilenet_v2", 14, None),
        ("mobilenet_v2", 15, 116),
        ("mobilenet_v2", 24, 116),  # 30 photos a class
        ("mobilenet_v2", 115, 116),  # SIGNS: 864 photos in 6 classes, 80% trained on
        ("mobilenet_v2", 400, 54),
        ("mobilenet_v2", 5000, 0),
        ("resnet50", 115, 143),
        ("resnet50", 800, 81),
    ],
)
def test_auto_strategy_unfreezes_more_with_more_images_per_class(base, per_class, layer):
    choice = choose_fine_tune_at(base, per_class)
    assert choice.layer == layer
    assert f"{per_class} training images per class" in choice.reason


def test_chosen_layers_start_blocks_of_the_built_bases():
    net = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    spec = BASES["mobilenet_v2"]
    assert net.layers[spec.top_stage].name == "block_13_expand"
    assert net.layers[spec.upper_half].name == "block_6_expand"


def test_auto_is_recorded_with_its_reason_and_a_given_layer_is_obeyed():
    summary = DatasetSummary(["a", "b"], {"a": 150, "b": 150})
    layer, record = _fine_tune_choice(TrainParams(), summary)
    assert layer == 116 and record["auto"] and "120 training images per class" in record["reason"]
    layer, record = _fine_tune_choice(TrainParams(fine_tune_at=30), summary)
    assert (layer, record["reason"]) == (30, "given")
    assert _fine_tune_choice(TrainParams(from_scratch=True), summary)[0] is None


def test_patience_is_longer_from_scratch_unless_given():
    assert TrainParams().resolved_early_stopping_patience == 4
    assert TrainParams(from_scratch=True).resolved_early_stopping_patience == 8
    assert (
        TrainParams(from_scratch=True, early_stopping_patience=0).resolved_early_stopping_patience
        == 0
    )


def test_the_learning_rate_decays_from_scratch_and_follows_plateaus_in_transfer_unless_given():
    assert TrainParams().resolved_lr_schedule == "plateau"
    assert TrainParams(from_scratch=True).resolved_lr_schedule == "decay"
    assert TrainParams(lr_schedule="decay").resolved_lr_schedule == "decay"
    assert TrainParams(from_scratch=True, lr_schedule="plateau").resolved_lr_schedule == "plateau"
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainParams(lr_schedule="cosine")


def test_class_weights_balance_the_loss_only_when_asked_or_needed():
    weights, why = class_weights({"a": 300, "b": 100}, "auto")
    assert weights == {0: pytest.approx(400 / 600), 1: pytest.approx(2.0)}
    assert why.startswith("balanced")
    # Each class then weighs the same in the loss: count x weight is equal.
    assert 300 * weights[0] == pytest.approx(100 * weights[1])
    assert class_weights({"a": 200, "b": 100}, "auto")[0] is None  # 2x is not imbalanced
    assert class_weights({"a": 200, "b": 100}, "balanced")[0] is not None
    assert class_weights({"a": 900, "b": 10}, "none") == (None, "off")


def _tiny_model() -> keras.Model:
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(1, name="d")(inputs))


def test_early_stopping_keeps_the_best_epoch_and_survives_a_restart(tmp_path):
    model = _tiny_model()
    model.stop_training = False  # as fit() sets it
    best = _BestEpoch(tmp_path, patience=2)
    best.set_model(model)
    best.on_train_begin()
    for epoch, loss in enumerate([1.0, 0.5, 0.7]):
        model.get_layer("d").kernel.assign(np.full((2, 1), float(epoch), "float32"))
        best.on_epoch_end(epoch, {"val_loss": loss})
    assert not model.stop_training and best.best_epoch == 2
    # The process dies here; a new attempt picks up the state, not a fresh start.
    again = _BestEpoch(tmp_path, patience=2)
    again.set_model(model)
    again.on_train_begin()
    assert (again.best, again.best_epoch, again.wait) == (0.5, 2, 1)
    model.get_layer("d").kernel.assign(np.full((2, 1), 3.0, "float32"))
    again.on_epoch_end(3, {"val_loss": 0.6})
    assert model.stop_training and again.stopped_early
    # What the version's metadata says of the phase.
    assert _stop_reason(again, _Deadline(None), ran=4, max_epochs=10) == "early_stopping"
    assert _stop_reason(again, _Deadline(None), ran=10, max_epochs=10) == "max_epochs"
    assert again.restore(model)
    assert np.all(keras.ops.convert_to_numpy(model.get_layer("d").kernel) == 1.0)


def _fit(tmp_path, name, weights=None, **overrides):
    data = make_dataset(tmp_path / "data", classes=("hstripes", "vstripes"), per_class=20)
    params = TrainParams(
        **{
            "image_size": 32,
            "batch_size": 8,
            "fine_tune_at": 140,
            "seed": 3,
            "refit": "off",  # the selection run is what these look at
            **overrides,
        }
    )
    registry = ModelRegistry(tmp_path / "models")
    lines: list[str] = []
    started = time.monotonic()
    result = train(
        data,
        name,
        params,
        registry,
        tmp_path / "ws",
        weights=weights,
        hooks=Hooks(log=lines.append),
    )
    meta = registry.metadata(name, result.version)
    return result, meta, lines, time.monotonic() - started


@pytest.mark.slow  # trains a network (about 15 s): kept out of the 5-minute fast suite
@pytest.mark.skipif(
    not MOBILENET_WEIGHTS.exists(),
    reason=f"ImageNet MobileNetV2 weights not on disk at {MOBILENET_WEIGHTS}",
)
def test_a_fine_tuning_that_only_hurts_leaves_the_head_weights(tmp_path):
    # The head learns the patterns on the pretrained features; a learning rate of 1 then
    # wrecks the unfrozen layers: every fine-tuning epoch is worse.
    result, meta, lines, _ = _fit(
        tmp_path,
        "wrecked",
        weights=str(MOBILENET_WEIGHTS),
        epochs=3,
        fine_tune_epochs=6,
        fine_tune_learning_rate=1.0,
        early_stopping_patience=2,
    )
    head, fine = meta["training"]["phases"]
    assert head["phase"] == "head" and fine["phase"] == "fine_tune"
    assert fine["kept"] == "head" and fine["best_val_loss"] > head["best_val_loss"]
    assert head["stopped"] == "max_epochs"
    # Early stopping counts within the phase (fine-tuning often starts worse than the head
    # and overtakes it later), so whether a wrecked phase stops early depends on how its
    # loss falls back from the wreck: with oneDNN kernels it falls every epoch but one.
    if fine["stopped"] == "early_stopping":
        assert fine["epochs_run"] < 6
    else:
        assert (fine["stopped"], fine["epochs_run"]) == ("max_epochs", 6)
    assert any("keeping the head's weights" in line for line in lines)
    # The version is the head's best epoch: its validation accuracy, not the wrecked one's.
    val_loss = [h["val_loss"] for h in meta["history"] if h["phase"] == "head"]
    assert min(val_loss) == pytest.approx(head["best_val_loss"], abs=1e-5)
    best_head = meta["history"][head["best_epoch"] - 1]
    assert result.metrics["accuracy"] == pytest.approx(best_head["val_accuracy"])
    assert len(meta["history"]) == 3 + fine["epochs_run"]


@pytest.mark.slow  # trains a network (about 20 s)
def test_the_time_budget_stops_training_with_the_best_weights_and_says_so(tmp_path):
    result, meta, lines, seconds = _fit(
        tmp_path,
        "quick",
        epochs=500,
        fine_tune_epochs=500,
        max_minutes=0.15,
        early_stopping_patience=0,
    )
    training = meta["training"]
    phases = training["phases"]
    # The head may use 40% of the time left; fine-tuning gets the rest, if any is left
    # (on a busy machine the head's first epoch alone can take it all).
    assert phases[0]["phase"] == "head" and 0 < phases[0]["epochs_run"] < 500
    assert all(p["stopped"] == "time_budget" and p["epochs_run"] < 500 for p in phases)
    # A step once started is not cut short: fine-tuning's first step (which builds its
    # graph, seconds on a busy machine) and writing the version come on top of the budget.
    assert seconds < 0.15 * 60 + 30
    assert result.version == 1 and training["max_minutes"] == 0.15
    # What was chosen, and why, is in the version's metadata (plain JSON).
    assert training["fine_tune_at"] == {"value": 140, "reason": "given"}
    assert training["class_weight"]["reason"].startswith("off")
    assert training["augmentation"] == {
        "flip": "horizontal",
        "rotation": 0.05,
        "zoom": 0.1,
        "translation": 0.1,
        "contrast": 0.1,
        "brightness": 0.1,
    }
    assert json.loads(json.dumps(meta)) == meta
    assert all(
        p.get("schedule", "").startswith("divided by 3.3") for p in phases if p["epochs_run"]
    )
    assert any(line.startswith("fine-tuning: given") for line in lines)
    assert any("phase head stopped (time_budget)" in line for line in lines)

    # A job that dies after its last phase (while evaluating) resumes with the trained
    # weights, not an untrained head, and trains nothing again.
    _assert_a_resume_trains_nothing_again(tmp_path, "quick", meta, result)


def _assert_a_resume_trains_nothing_again(tmp_path, name, meta, result):
    """Train ``name`` again in the same workspace, as a job resumed after its last phase:
    the same history and metrics, in a new version, with nothing trained again."""
    registry = ModelRegistry(tmp_path / "models")
    params = TrainParams(**meta["params"])
    again = train(tmp_path / "data", name, params, registry, tmp_path / "ws", weights=None)
    assert again.version == 2 and again.history == meta["history"]
    assert again.metrics == result.metrics


def test_each_augmentation_setting_is_a_layer_and_inference_is_untouched():
    config = augment_config(TrainParams(flip="vertical", rotation=0.1, zoom=0, contrast=0.2))
    aug = build_augmentation(config)
    kinds = [type(layer).__name__ for layer in aug.layers]
    assert kinds == [
        "RandomFlip",
        "RandomRotation",
        "RandomTranslation",
        "RandomContrast",
        "RandomBrightness",
    ]
    assert aug.layers[0].mode == "vertical" and aug.layers[3].value_range == (0, 255)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    assert np.array_equal(keras.ops.convert_to_numpy(aug(images, training=False)), images)
    changed = keras.ops.convert_to_numpy(aug(images, training=True))
    assert not np.allclose(changed, images)
    assert augment_config(TrainParams(augment=False)) is None
    none = TrainParams(flip="none", rotation=0, zoom=0, translation=0, contrast=0, brightness=0)
    assert build_augmentation(augment_config(none)) is None


def test_batchnorm_statistics_are_recomputed_over_the_training_images_without_augmentation():
    from app.training.trainer import recompute_batchnorm_statistics

    inputs = keras.Input((3,), name="image")
    # Active only in training, like augmentation; it would swamp the statistics if it were
    # not left out.
    x = keras.layers.Dropout(0.9, name="augmentation")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="top")(x))
    rng = np.random.default_rng(0)
    batches = [
        rng.normal(loc=[1.0, -2.0, 5.0], scale=[1.0, 0.5, 3.0], size=(32, 3)) for _ in range(8)
    ]
    dataset = [(b.astype("float32"), np.zeros(32)) for b in batches]

    assert recompute_batchnorm_statistics(model, dataset) == 8
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean, np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(
        bn.moving_variance, np.mean([b.var(0) for b in batches], 0), rtol=1e-4
    )
    assert bn.momentum == 0.9  # training would go on as before


@pytest.mark.slow  # 12 s: two fits and a resume
def test_a_phase_the_budget_left_no_time_for_is_recorded_and_not_trained_on_resume(tmp_path):
    result, meta, _, _ = _fit(
        tmp_path, "tight", epochs=3, fine_tune_epochs=3, max_minutes=0.001,
        early_stopping_patience=0,
    )  # fmt: skip
    phases = meta["training"]["phases"]
    assert [p["phase"] for p in phases] == ["head", "fine_tune"]
    assert phases[1]["epochs_run"] == 0 and phases[1]["stopped"] == "time_budget"
    # A job that dies after this point (while evaluating) resumes without training the
    # phase its budget had no time for.
    _assert_a_resume_trains_nothing_again(tmp_path, "tight", meta, result)


def test_from_scratch_the_learning_rate_falls_to_nothing_when_the_budget_runs_out():
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mse")
    x, y = np.ones((8, 2), "float32"), np.ones((8, 1), "float32")

    def rates(decay: _BudgetDecay, epochs: int, pause: float = 0.0) -> list[float]:
        seen: list[float] = []
        log = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda b, logs: (
                seen.append(float(model.optimizer.learning_rate.numpy())),
                time.sleep(pause),
            )
        )
        model.fit(x, y, batch_size=2, epochs=epochs, verbose=0, callbacks=[decay, log])
        return seen

    # By steps: 3 epochs of 4 steps, from the full rate down to a twelfth of it.
    by_steps = rates(_BudgetDecay(1e-3, 4, (0, 3), deadline=None), epochs=3)
    assert by_steps[0] == pytest.approx(1e-3)
    assert by_steps == sorted(by_steps, reverse=True)
    assert by_steps[-1] == pytest.approx(1e-3 / 12, rel=1e-3)
    # A phase resumed at its third epoch goes on from the rate it had there.
    model.fit(
        x, y, batch_size=2, initial_epoch=2, epochs=3, verbose=0,
        callbacks=[resumed := _BudgetDecay(1e-3, 4, (0, 3), deadline=None)],
    )  # fmt: skip
    assert resumed._step == 12
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(by_steps[-1], rel=1e-3)
    # By time: a budget of 0.4 s that 12 steps of 0.05 s outlast; the rate stops at the
    # floor instead of going negative.
    by_time = rates(_BudgetDecay(1e-3, 1000, (0, 3), deadline=time.monotonic() + 0.4), 3, 0.05)
    assert by_time == sorted(by_time, reverse=True)
    assert by_time[-1] == pytest.approx(1e-3 * MIN_RATE_FRACTION)
    # Fine-tuning's warm-up: the rate rises over the first epoch's 4 steps, then falls.
    warm = rates(_BudgetDecay(1e-3, 4, (0, 3), deadline=None, warmup_steps=4), epochs=3)
    assert warm[:4] == sorted(warm[:4]) and warm[0] == pytest.approx(by_steps[0] / 4)
    assert warm[3] == pytest.approx(by_steps[3]) and warm[3:] == by_steps[3:]
