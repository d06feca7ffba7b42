import json
import time

import keras
import numpy as np
import pytest
from PIL import Image

from app.data.images import load_image
from app.serving.features import FeatureBank, features_of
from app.storage.registry import ModelRegistry
from app.training.evaluate import classification_metrics
from app.training.params import TrainParams
from app.training.trainer import Hooks, TrainingCancelled, train
from tests.helpers import MOBILENET_WEIGHTS, make_dataset, pattern_image

needs_weights = pytest.mark.skipif(
    not MOBILENET_WEIGHTS.exists(),
    reason=f"ImageNet MobileNetV2 weights not on disk at {MOBILENET_WEIGHTS}",
)


def _fast_params(**overrides):
    values = dict(
        base="mobilenet_v2",
        epochs=3,
        fine_tune_epochs=1,
        fine_tune_at=120,
        image_size=64,
        batch_size=16,
        seed=1,
    )
    return TrainParams(**{**values, **overrides})


@pytest.mark.slow  # 27 s of training; the job tests train through the same code fast
@needs_weights
def test_synthetic_classes_train_to_high_accuracy_and_land_in_the_registry(tmp_path):
    data = make_dataset(
        tmp_path / "data", classes=("hstripes", "vstripes", "checks"), per_class=30, size=32
    )
    registry = ModelRegistry(tmp_path / "models")
    lines: list[str] = []
    started = time.perf_counter()
    result = train(
        data,
        "shapes",
        _fast_params(),
        registry,
        tmp_path / "ws",
        weights=str(MOBILENET_WEIGHTS),
        hooks=Hooks(log=lines.append),
    )
    assert time.perf_counter() - started < 60
    assert result.metrics["accuracy"] >= 0.9
    assert result.version == 1 and registry.versions("shapes") == [1]
    meta = registry.metadata("shapes", 1)
    assert meta["class_names"] == ["checks", "hstripes", "vstripes"]
    assert meta["image_size"] == 64 and meta["base"] == "mobilenet_v2"
    # 24 training photos per class: refit on all 90 for the epochs the selection run
    # chose, at the rates it trained at; from its head when fine-tuning followed it.
    selection = [h for h in meta["history"] if h["phase"] != "refit"]
    assert [h["phase"] for h in selection] == ["head"] * 3 + ["fine_tune"]
    refit = meta["training"]["refit"]
    assert refit["done"] is True and refit["images"] == 90
    kept_head = meta["training"]["phases"][1].get("kept") == "head"
    assert refit["start"] == ("fresh" if kept_head else "the selection run's head")
    assert list(refit["epochs"]) == (["head"] if kept_head else ["fine_tune"])
    chosen = [
        h
        for p in meta["training"]["phases"]
        if p["phase"] in refit["epochs"]
        for h in selection
        if h["phase"] == p["phase"] and h["epoch"] <= p["best_epoch"]
    ]
    replayed = [h for h in meta["history"] if h["phase"] == "refit"]
    assert [h["learning_rate"] for h in replayed] == [h["learning_rate"] for h in chosen]
    assert sum(refit["epochs"].values()) == len(replayed)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(meta["history"][0])
    assert meta["metrics"]["confusion_matrix"] and meta["dataset"]["images"] == 90
    assert any(line.startswith("epoch 4/") and "(fine_tune)" in line for line in lines)
    assert all(h["ended_at"] > time.time() - 600 for h in meta["history"])

    # Calibrated on its validation images, with the threshold that keeps 97% of them.
    calibration, abstention = meta["calibration"], meta["abstention"]
    assert calibration["ece_after"] <= calibration["ece_before"] + 1e-9
    assert calibration["images"] == meta["metrics"]["images"]
    assert abstention["keep_share"] == 0.97 and abstention["kept_share"] >= 0.97
    assert any(line.startswith("calibration: temperature") for line in lines)
    # Unknown by the nearest training image: the features of every image the selection
    # run trained on, taken from the model that is served (the refit's).
    assert abstention["method"] == "nearest" and 0 < abstention["top_score_threshold"] <= 1
    bank = FeatureBank.read(registry.version_dir("shapes", 1))
    assert bank is not None and bank.layer == abstention["layer"]
    assert len(bank.features) == abstention["bank_images"] == 90 - meta["metrics"]["images"]
    served = keras.saving.load_model(registry.model_path("shapes", 1))
    prepared = [np.asarray(Image.open(f)) for f in sorted((tmp_path / "ws").glob("images/*/*.png"))]
    _, features = features_of(served, [np.stack(prepared)])
    # Each finds itself (kept in float16).
    assert (bank.nearest(features) > 0.999).sum() >= len(bank.features)

    # The version keeps its validation images: each counted in the confusion matrix cell
    # it is filed under, with the uploaded file it came from.
    kept = registry.validation_samples("shapes", 1)
    matrix = np.array(meta["metrics"]["confusion_matrix"])
    assert len(kept["images"]) == matrix.sum() == meta["metrics"]["images"]  # < 24 per cell
    for item in kept["images"]:
        assert matrix[item["true"], item["predicted"]] > 0
        assert item["source"].split("/")[0] == meta["class_names"][item["true"]]
        with Image.open(registry.validation_image("shapes", 1, item["file"])) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 96

    # The saved model takes raw pixels decoded the serving way.
    model = keras.saving.load_model(registry.model_path("shapes", 1))
    x = np.stack(
        [
            load_image(_png(pattern_image(k, 32, seed=99)), 64)
            for k in ("checks", "hstripes", "vstripes")
        ]
    ).astype("float32")
    assert np.argmax(model.predict(x, verbose=0), axis=1).tolist() == [0, 1, 2]


def _png(img):
    from tests.helpers import image_bytes

    return image_bytes(img, "PNG")


def test_cancel_stops_training_and_writes_nothing(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=10, size=32)
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(TrainingCancelled):
        train(
            data,
            "shapes",
            _fast_params(),
            registry,
            tmp_path / "ws",
            weights=None,
            hooks=Hooks(log=lambda _: None, should_stop=lambda: True),
        )
    assert registry.versions("shapes") == []


def test_metrics_from_a_known_confusion():
    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["a", "b"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.666667, "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert json.dumps(m)


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("image_size", 8),
        ("learning_rate", 0),
        ("fine_tune_at", 154),
        ("base", "vgg19"),
        ("validation_split", 0.9),
    ],
)
def test_out_of_range_parameters_name_the_field(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        TrainParams(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_cancel_between_phases_stops_before_the_next_one_starts(tmp_path):
    """A cancellation that arrives as the head phase ends stops before the fine-tuning
    phase builds anything (its first step can take longer than a cancelled job is given)."""
    data = make_dataset(tmp_path / "data", per_class=10, size=32)
    registry = ModelRegistry(tmp_path / "models")
    asked: list[bool] = []
    phases: list[str] = []
    lines: list[str] = []

    def on_epoch(report):
        if report.epoch == 2:  # the last epoch of the head phase
            asked.append(True)

    with pytest.raises(TrainingCancelled):
        train(
            data,
            "shapes",
            _fast_params(epochs=2, fine_tune_epochs=2),
            registry,
            tmp_path / "ws",
            weights=None,
            hooks=Hooks(
                log=lines.append,
                on_epoch=on_epoch,
                on_phase=lambda phase, first, total: phases.append(phase),
                should_stop=lambda: bool(asked),
            ),
        )
    assert phases == ["head"]
    assert not any("phase fine_tune" in line for line in lines), lines
    assert registry.versions("shapes") == []


class _Stop(BaseException):
    """Stands for the job's JobStopped (raised by its SIGTERM handler)."""


@pytest.mark.slow  # two trainings; its teardown took 15 s in CI
def test_a_stop_waits_for_the_epochs_files_and_a_broken_checkpoint_falls_back(tmp_path):
    import h5py

    from app.training import interrupt

    data = make_dataset(tmp_path / "data", per_class=8, size=32)
    registry = ModelRegistry(tmp_path / "models")
    params = TrainParams(base="lenet5", image_size=32, epochs=4, batch_size=8, seed=1, refit="off")
    workspace = tmp_path / "ws"

    def log(line: str) -> None:
        # The first line of epoch 2's end, before its history is written: a stop here
        # waits until every file of the epoch is.
        if line.startswith("epoch 2/"):
            interrupt.request_stop(_Stop())

    with pytest.raises(_Stop):
        train(data, "shapes", params, registry, workspace, weights=None, hooks=Hooks(log=log))
    phase = workspace / "phases" / "train"  # from scratch: one phase
    assert [h["epoch"] for h in json.loads((workspace / "history.json").read_text())] == [1, 2]
    assert json.loads((phase / "backup" / "training_metadata.json").read_text())["epoch"] == 2
    assert json.loads((phase / "best.json").read_text())["epochs_run"] == 2

    # A checkpoint that opens but holds no layers (a process killed while writing it):
    # the resume falls back to the previous epoch's and the job still ends.
    h5py.File(phase / "backup" / "latest.weights.h5", "w").close()
    result = train(
        data, "shapes", params, registry, workspace, weights=None, hooks=Hooks(log=lambda _: None)
    )
    assert registry.versions("shapes") == [result.version]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "refit, per_class, wanted",
    [
        ("auto", 30, True),
        ("auto", 99, True),
        ("auto", 125, False),
        ("on", 500, True),
        ("off", 10, False),
    ],
)
def test_small_uploads_are_refit_on_every_image(refit, per_class, wanted):
    """auto refits when the training share of the upload is under 100 images per class."""
    from app.data.datasets import DatasetSummary
    from app.training.trainer import REFIT_BELOW_PER_CLASS, _refit_choice

    classes = ["a", "b", "c"]
    summary = DatasetSummary(class_names=classes, counts=dict.fromkeys(classes, per_class))
    chosen, reason = _refit_choice(TrainParams(refit=refit, validation_split=0.2), summary)
    assert chosen is wanted
    assert REFIT_BELOW_PER_CLASS == 100
    if refit == "auto":
        assert f"{round(per_class * 0.8)} training images per class" in reason


def _train_lenet(tmp_path, hooks, **overrides):
    """LeNet-5 from scratch on 8 generated images per class (a small upload): the
    registry and the result."""
    data = make_dataset(tmp_path / "data", per_class=8, size=32)
    registry = ModelRegistry(tmp_path / "models")
    params = TrainParams(
        **{
            "base": "lenet5",
            "image_size": 32,
            "batch_size": 8,
            "seed": 1,
            "early_stopping_patience": 0,
            "label_health": False,
            **overrides,
        }
    )
    result = train(data, "shapes", params, registry, tmp_path / "ws", weights=None, hooks=hooks)
    return registry, result


def test_a_refit_trains_a_fresh_model_on_every_image_for_the_chosen_epochs(tmp_path):
    """The selection run picks its best epoch on the validation split; the refit trains
    that many epochs on all the images and is the version served, while the version's
    validation figures stay the selection run's, said to be so."""
    lines: list[str] = []
    phases: list[str] = []
    hooks = Hooks(log=lines.append, on_phase=lambda p, first, total: phases.append(p))
    registry, result = _train_lenet(tmp_path, hooks, epochs=4, refit="on")
    meta = registry.metadata("shapes", result.version)
    refit = meta["training"]["refit"]
    best = meta["training"]["phases"][0]["best_epoch"]
    images = meta["dataset"]["images"]  # 8 per class
    assert refit["done"] is True and refit["images"] == images == 8 * len(meta["class_names"])
    assert refit["epochs"] == {"train": best} and refit["start"] == "fresh"
    assert "selection run" in refit["validation"]
    assert phases == ["train", "refit"]
    # Its epochs follow the selection run's in the history, with no validation figures.
    refits = [h for h in meta["history"] if h["phase"] == "refit"]
    assert [h["epoch"] for h in refits] == list(range(5, 5 + best))
    assert all("val_loss" not in h and h["learning_rate"] > 0 for h in refits)
    assert meta["metrics"]["images"] < images  # the validation figures: the selection run's
    assert any(line == f"refit on all {images} images: train {best} epochs" for line in lines)

    # The version served is the refit: not the weights the selection run ended with.
    served = keras.saving.load_model(registry.model_path("shapes", result.version))
    selection = keras.saving.load_model(registry.model_path("shapes", result.version))
    selection.load_weights(tmp_path / "ws" / "phases" / "train" / "result.weights.h5")
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(served.get_weights(), selection.get_weights(), strict=True)
    )


def test_a_refit_that_would_not_fit_the_time_budget_is_skipped(tmp_path, monkeypatch):
    """The refit's time is foreseen from the selection run's epochs (here made to look
    as if each took a day); one that would end after the budget is not started."""
    from app.training import trainer

    plan = trainer._Run._refit_plan

    def slow_plan(run):
        phases, first = plan(run)
        return [(name, [{**h, "seconds": 86400} for h in e]) for name, e in phases], first

    monkeypatch.setattr(trainer._Run, "_refit_plan", slow_plan)
    registry, result = _train_lenet(tmp_path, Hooks(log=lambda _: None), epochs=2)
    refit = registry.metadata("shapes", result.version)["training"]["refit"]
    assert refit["done"] is False and refit["reason"].startswith("skipped")
    assert [h["phase"] for h in result.history] == ["train", "train"]
