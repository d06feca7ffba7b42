"""Two-phase training: the head on a frozen base, then fine-tuning from a chosen layer.

`train` takes a directory of class folders and writes a new registry version. It can run
in a workspace that survives a crash: each phase backs up its state every epoch
(`keras.callbacks.BackupAndRestore`), and a second call with the same workspace resumes
from the last completed epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from app.data.datasets import (
    IMBALANCE_RATIO,
    SOURCES_FILE,
    DatasetError,
    DatasetSummary,
    load_datasets,
    load_training_files,
    prepare_dataset,
)
from app.data.heldout import heldout_from_prepared, read_prepared, seeded_sample
from app.nets.transfer import AugmentConfig, build_classifier, choose_fine_tune_at, unfreeze_from
from app.serving.calibration import calibration_record
from app.serving.features import (
    MAX_BANK_IMAGES,
    FeatureBank,
    classifier_layer,
    features_of,
    nearest_record,
)
from app.serving.precision import study_or_fallback
from app.storage.objects import write_text_atomic
from app.storage.registry import MODEL_FILE, ModelRegistry
from app.training import interrupt
from app.training.evaluate import (
    classification_metrics,
    predict_probabilities,
    write_validation_samples,
)
from app.training.health import HEALTH_FILE, HealthImage, label_health
from app.training.params import TrainParams

Log = Callable[[str], None]


class TrainingCancelled(Exception):
    """Raised when a `should_stop` check asks training to stop."""


@dataclass
class TrainResult:
    name: str
    version: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    dataset: dict[str, Any]
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "accuracy": self.metrics["accuracy"],
            "metrics": self.metrics,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class EpochReport:
    phase: str
    epoch: int  # 1-based, counted over both phases
    total_epochs: int
    logs: dict[str, float]
    seconds: float


@dataclass
class Hooks:
    """What a caller (the CLI, a job worker) learns and controls during training."""

    log: Log = print
    on_epoch: Callable[[EpochReport], None] | None = None
    on_phase: Callable[[str, int, int], None] | None = None  # phase, first epoch, total
    on_batch: Callable[[int, int, int], None] | None = None  # epoch (0-based), batch, steps
    should_stop: Callable[[], bool] | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)


class _EpochCallback(keras.callbacks.Callback):
    """Times each epoch, logs it, records it in the workspace and tells the hooks; checks
    for a stop request after every batch."""

    def __init__(self, phase: str, total: int, hooks: Hooks, history_file: Path) -> None:
        super().__init__()
        self.phase = phase
        self.total = total
        self.hooks = hooks
        self.history_file = history_file
        self._started = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        _check_stop(self.hooks)  # before the epoch's input pipeline fills its buffers
        self._started = time.perf_counter()
        self._epoch = epoch  # 0-based, counted over both phases

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        _check_stop(self.hooks)
        if self.hooks.on_batch is not None:
            steps = int(self.params.get("steps") or 0)
            self.hooks.on_batch(self._epoch, batch + 1, steps)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self._started
        values = {k: round(float(v), 6) for k, v in (logs or {}).items() if k != "learning_rate"}
        report = EpochReport(self.phase, epoch + 1, self.total, values, seconds)
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        self.hooks.log(f"epoch {epoch + 1}/{self.total} ({self.phase}) {seconds:.1f}s {shown}")
        # The rate the epoch trained at: ReduceLROnPlateau puts it in the logs before it
        # lowers it for the next epoch; otherwise the optimizer's (the decay's last step).
        rate = (logs or {}).get("learning_rate")
        if rate is None:
            rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        history = read_history(self.history_file)
        history = [h for h in history if h["epoch"] != epoch + 1]
        history.append(
            {
                "epoch": epoch + 1,
                "phase": self.phase,
                "seconds": round(seconds, 2),
                "ended_at": round(time.time(), 3),  # Unix time: when the epoch's point is due
                **values,
                "learning_rate": round(float(rate), 9),
            }
        )
        write_text_atomic(self.history_file, json.dumps(history))
        if self.hooks.on_epoch is not None:
            self.hooks.on_epoch(report)


class _HoldStop(keras.callbacks.Callback):
    """First at an epoch's end: a stop requested from here waits for `_ReleaseStop`."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        interrupt.hold()


class _ReleaseStop(keras.callbacks.Callback):
    """Last at an epoch's end: every file of the epoch is written; a stop can land."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        interrupt.release()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        interrupt.release()  # an epoch's end that raised before reaching this one


class _Backup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore with files that are never half written.

    Keras writes the checkpoint in place and falls back to the previous one only when the
    latest cannot be opened; a process killed mid-write can leave a file that opens but
    lacks layers. Here each file is written beside its target and renamed over it, and any
    checkpoint that does not load falls back to the previous one."""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder), delete_checkpoint=False, double_checkpoint=True)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            self._load_model()
        except Exception:
            if not os.path.exists(self._prev_weights_path):
                raise
            self._replace_with_copy(self._prev_weights_path, self._weights_path)
            if os.path.exists(self._prev_training_metadata_path):
                self._replace_with_copy(
                    self._prev_training_metadata_path, self._training_metadata_path
                )
            self._load_model()

    def _save_model(self) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        if os.path.exists(self._weights_path):
            self._replace_with_copy(self._weights_path, self._prev_weights_path)
        if os.path.exists(self._training_metadata_path):
            self._replace_with_copy(self._training_metadata_path, self._prev_training_metadata_path)
        partial = os.path.join(self.backup_dir, "partial.weights.h5")
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, self._weights_path)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        write_text_atomic(Path(self._training_metadata_path), json.dumps(metadata))

    @staticmethod
    def _replace_with_copy(source: str, target: str) -> None:
        partial = f"{target}.partial"
        shutil.copyfile(source, partial)
        os.replace(partial, target)


def augment_config(params: TrainParams) -> AugmentConfig | None:
    """The random changes the parameters ask for (None: no augmentation)."""
    if not params.augment:
        return None
    return AugmentConfig(
        flip=None if params.flip == "none" else params.flip,
        rotation=params.rotation,
        zoom=params.zoom,
        translation=params.translation,
        contrast=params.contrast,
        brightness=params.brightness,
    )


def _check_stop(hooks: Hooks) -> None:
    if hooks.should_stop is not None and hooks.should_stop():
        raise TrainingCancelled("training was cancelled")


def read_history(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return []


class _BestEpoch(keras.callbacks.Callback):
    """Early stopping on the validation loss that survives a restart.

    Keeps the best epoch's weights in ``folder`` (written when the loss improves) and its
    state beside them, so a phase resumed after a crash still knows its best epoch. Stops
    the phase after ``patience`` epochs without improvement (0: never).
    """

    MIN_DELTA = 1e-4

    def __init__(self, folder: Path, patience: int) -> None:
        super().__init__()
        self.folder = folder
        self.patience = patience
        self.weights_file = folder / "best.weights.h5"
        self.state_file = folder / "best.json"
        self.best = float("inf")
        self.best_epoch = 0  # 1-based; 0: none yet
        self.wait = 0
        self.epochs_run = 0
        self.stopped_early = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with _suppress_missing():
            state = json.loads(self.state_file.read_text())
            self.best, self.best_epoch = state["best"], state["best_epoch"]
            self.wait, self.epochs_run = state["wait"], state["epochs_run"]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = float((logs or {}).get("val_loss", float("nan")))
        self.epochs_run = epoch + 1
        if loss < self.best - self.MIN_DELTA:
            self.best, self.best_epoch, self.wait = loss, epoch + 1, 0
            partial = self.folder / "best.partial.weights.h5"
            self.model.save_weights(partial)
            os.replace(partial, self.weights_file)  # never half a file
        else:
            self.wait += 1
            if self.patience and self.wait >= self.patience:
                self.stopped_early = True
                self.model.stop_training = True
        state = {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "epochs_run": self.epochs_run,
        }
        write_text_atomic(self.state_file, json.dumps(state))

    def restore(self, model: keras.Model) -> bool:
        """Load the best epoch's weights into ``model``; false if there were none."""
        if not self.weights_file.exists():
            return False
        load_weights(model, self.weights_file)
        return True


def load_weights(model: keras.Model, path: Path) -> None:
    """The layers' weights from ``path``. The file also holds the optimizer state of the
    phase that wrote it, which a new phase (new optimizer) does not want: Keras skips it,
    with a warning that would only confuse a reader of the job's log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


class _Deadline(keras.callbacks.Callback):
    """Stops a phase when the next epoch would end after ``deadline`` (monotonic time),
    or at once if the deadline has passed."""

    def __init__(self, deadline: float | None) -> None:
        super().__init__()
        self.deadline = deadline
        self.reached = False
        self._epoch_started = 0.0
        self._longest = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_started = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.reached = self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        self._longest = max(self._longest, now - self._epoch_started)
        if self.deadline is not None and now + self._longest > self.deadline:
            self.reached = self.model.stop_training = True


class _WarmUp(keras.callbacks.Callback):
    """Raises the learning rate linearly to its value over the first ``steps`` steps, so
    that the first updates of newly unfrozen layers do not wreck pretrained weights."""

    def __init__(self, steps: int, learning_rate: float) -> None:
        super().__init__()
        self.steps = max(1, steps)
        self.learning_rate = learning_rate
        self._step = 0

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._step < self.steps:
            self._step += 1
            self.model.optimizer.learning_rate.assign(self.learning_rate * self._step / self.steps)


class _Rates(keras.callbacks.Callback):
    """Sets the learning rate of each epoch from a list (the refit replays the rates the
    selection run trained at; `_WarmUp`, after it, still warms the first epoch up)."""

    def __init__(self, rates: list[float], first: int) -> None:
        super().__init__()
        self.rates = rates
        self.first = first

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        index = min(max(epoch - self.first, 0), len(self.rates) - 1)
        self.model.optimizer.learning_rate.assign(self.rates[index])


# The budget decay's floor: a step at exactly zero would be wasted.
MIN_RATE_FRACTION = 0.01


class _BudgetDecay(keras.callbacks.Callback):
    """Lowers the learning rate linearly from its value to nothing over the phase's
    budget: its epochs or its time, whichever runs out first ("budgeted training", Li,
    Yumer and Ramanan, ICLR 2020: a schedule that reaches zero when the budget does beats
    a fixed rate cut short). A network trained from scratch at a fixed rate ends wherever
    its last steps left it, and its validation accuracy jumps from epoch to epoch; the
    last epochs at a low rate settle it."""

    def __init__(
        self,
        learning_rate: float,
        steps_per_epoch: int,
        epochs: tuple[int, int],
        deadline: float | None,
        warmup_steps: int = 0,
    ) -> None:
        """``epochs``: the phase's first and end epoch (0-based, end excluded);
        ``warmup_steps``: the rate first rises linearly over this many steps (as `_WarmUp`)."""
        super().__init__()
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.first = epochs[0]
        self.steps = max(1, self.steps_per_epoch * (epochs[1] - epochs[0]))
        self.deadline = deadline
        self._step = 0
        self._started = 0.0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # From the epoch, not a count of this process's steps: a resumed job goes on
        # from where the rate was when it stopped.
        self._step = (epoch - self.first) * self.steps_per_epoch

    def progress(self) -> float:
        done = self._step / self.steps
        if self.deadline is not None:
            budget = max(self.deadline - self._started, 1e-9)
            done = max(done, (time.monotonic() - self._started) / budget)
        return min(done, 1.0)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        rate = self.learning_rate * max(1.0 - self.progress(), MIN_RATE_FRACTION)
        if self._step < self.warmup_steps:
            rate *= (self._step + 1) / self.warmup_steps
        self.model.optimizer.learning_rate.assign(rate)
        self._step += 1


class _suppress_missing(contextlib.suppress):
    def __init__(self) -> None:
        super().__init__(FileNotFoundError, ValueError, KeyError)


def class_weights(counts: dict[str, int], mode: str) -> tuple[dict[int, float] | None, str]:
    """Per-class loss weights (class index -> weight) and why.

    ``balanced`` weighs each class by ``images / (classes * class images)``, so each class
    counts as much in the loss as the others; ``auto`` does so when the largest class has
    more than twice the images of the smallest.
    """
    sizes = list(counts.values())
    ratio = max(sizes) / max(min(sizes), 1)
    if mode == "none" or (mode == "auto" and ratio <= IMBALANCE_RATIO):
        why = "off" if mode == "none" else f"off: largest class {ratio:.1f}x the smallest"
        return None, why
    total = sum(sizes)
    weights = {i: total / (len(sizes) * max(n, 1)) for i, n in enumerate(sizes)}
    return weights, f"balanced: largest class {ratio:.1f}x the smallest"


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )


# Kept for the evaluation and the writing of the version after the last phase: this
# share of the time budget, and at most this many seconds.
FINISH_RESERVE_SHARE = 0.05
FINISH_RESERVE_SECONDS = 30.0
# And for the precision study when it runs (MobileNetV2 at 224x224 on SIGNS: about 50 s).
STUDY_RESERVE_SHARE = 0.10
STUDY_RESERVE_SECONDS = 90.0
# Share of the time left that the head phase may use when fine-tuning follows.
HEAD_SHARE = 0.4
# The weights a phase ends with (its best epoch's, or the head's if fine-tuning never
# beat it), kept in the phase's folder for the next phase and for a resumed job.
PHASE_RESULT = "result.weights.h5"


@dataclass
class _Phase:
    name: str  # "head", "fine_tune" or "train" (from scratch)
    max_epochs: int
    learning_rate: float


def _phases(params: TrainParams, fine_tune_at: int | None) -> list[_Phase]:
    if params.from_scratch:
        return [_Phase("train", params.epochs, params.learning_rate)]
    phases = [_Phase("head", params.epochs, params.learning_rate)]
    if params.fine_tune_epochs and fine_tune_at is not None:
        lr = params.resolved_fine_tune_learning_rate
        phases.append(_Phase("fine_tune", params.fine_tune_epochs, lr))
    return phases


def _fine_tune_choice(
    params: TrainParams, summary: DatasetSummary
) -> tuple[int | None, dict[str, Any]]:
    """The layer fine-tuning starts from (None: no fine-tuning) and the record of why."""
    if params.from_scratch:
        return None, {"value": None, "reason": "from scratch: every layer trains"}
    if params.fine_tune_at != "auto":
        return int(params.fine_tune_at), {
            "value": params.fine_tune_at,
            "reason": "given",
        }
    per_class = summary.total * (1 - params.validation_split) / len(summary.class_names)
    choice = choose_fine_tune_at(params.base, per_class)
    return choice.layer, {"value": choice.layer, "auto": True, "reason": choice.reason}


# Uploads with fewer training images per class than this are refit on every image once the
# validation split has chosen the epochs (docs/training.md, "Small uploads": measured on
# 10 and 30 photos per class).
REFIT_BELOW_PER_CLASS = 100


def _refit_choice(params: TrainParams, summary: DatasetSummary) -> tuple[bool, str]:
    """Whether to refit on every image once the epochs are chosen, and why."""
    per_class = summary.total * (1 - params.validation_split) / len(summary.class_names)
    if params.refit != "auto":
        return params.refit == "on", "given"
    if per_class >= REFIT_BELOW_PER_CLASS:
        return False, (
            f"{per_class:.0f} training images per class: the validation split is large"
            f" enough to spare (refit under {REFIT_BELOW_PER_CLASS})"
        )
    return True, (
        f"{per_class:.0f} training images per class: the {params.validation_split:.0%} held"
        " out for validation is worth training on once it has chosen the epochs"
    )


def _stop_reason(best: _BestEpoch, deadline: _Deadline, ran: int, max_epochs: int) -> str:
    if deadline.reached:
        return "time_budget"
    if best.stopped_early and ran < max_epochs:
        return "early_stopping"
    return "max_epochs"


def train(
    data_dir: Path,
    name: str,
    params: TrainParams,
    registry: ModelRegistry,
    workspace: Path,
    weights: str | None = "imagenet",
    source: str = "cli",
    activate: bool = False,
    hooks: Hooks | None = None,
    study: bool = False,
    stored: StoredDataset | None = None,
) -> TrainResult:
    """Train a classifier on ``data_dir`` and write it as a new version of ``name``.

    Each phase (the head on the frozen base, then fine-tuning; or one phase from scratch)
    runs at most its number of epochs, stops early when the validation loss stops
    improving or the time budget runs out, and ends with the weights of its best epoch.
    The learning rate drops when the validation loss stalls, or falls linearly to nothing
    over the phase's budget (``lr_schedule``); fine-tuning warms up over its first
    epoch. If fine-tuning never beats the head's best validation loss, the head's weights
    are kept. The version's metadata says what was chosen and why each phase stopped
    (``training``).

    Args:
        data_dir: a folder with one sub-folder of images per class (or one root folder
            holding those).
        name: the registry model name.
        params: validated training parameters.
        registry: where the new version goes.
        workspace: scratch folder (prepared images, backups); reused to resume.
        weights: the base's pretrained weights: ``"imagenet"``, a file path, or ``None``.
        source: recorded as the version's source (``"cli"`` or a job id).
        activate: make the new version the active one.
        hooks: logging, progress and cancellation.
        study: run the precision study on the new version (`app.serving.precision`); its held-out
            set is kept either way.
        stored: the stored dataset version ``data_dir`` holds, recorded in the version's
            metadata with the ids of the images that were validation.

    Returns:
        The new version, its validation metrics and the per-epoch history.

    Raises:
        DatasetError: the data cannot be trained on.
        TrainingCancelled: ``hooks.should_stop`` returned true.
    """
    hooks = hooks or Hooks()
    started = time.perf_counter()
    keras.utils.set_random_seed(params.seed)
    workspace.mkdir(parents=True, exist_ok=True)
    summary = _prepare_images(data_dir, workspace, params, hooks)
    if params.negative_class is not None and params.negative_class not in summary.class_names:
        raise DatasetError(
            "negative_class_not_found",
            f"negative_class {params.negative_class!r} is not one of the dataset's classes"
            f" ({', '.join(summary.class_names)})",
            400,
        )
    run = _Run(
        params=params,
        hooks=hooks,
        workspace=workspace,
        deadline=_deadline(params, study),
        summary=summary,
        datasets=load_datasets(
            workspace / "images",
            len(summary.class_names),
            params.image_size,
            params.batch_size,
            params.validation_split,
            params.seed,
        ),
    )
    run.build_model(weights)
    run.train_phases()
    evaluation = run.evaluate()
    # Both from the selection run's model, which never trained on the validation images.
    health = run.label_health(stored) if params.label_health else None
    run.refit(weights)
    metadata = run.describe(evaluation, source, weights, stored, started, health)
    version = registry.write_version(
        name, run.saver(evaluation, metadata, study, health), metadata, activate=activate
    )
    hooks.log(f"wrote {name} version {version}")
    return TrainResult(
        name,
        version,
        evaluation.metrics,
        metadata["history"],
        summary.to_dict(),
        time.perf_counter() - started,
    )


def _deadline(params: TrainParams, study: bool) -> float | None:
    """When training must stop (monotonic clock) so that the version is evaluated and
    written (and its precision studied) within ``max_minutes``; None: no budget."""
    if not params.max_minutes:
        return None
    budget = params.max_minutes * 60
    reserve = min(budget * FINISH_RESERVE_SHARE, FINISH_RESERVE_SECONDS)
    if study:
        reserve += min(budget * STUDY_RESERVE_SHARE, STUDY_RESERVE_SECONDS)
    return time.monotonic() + budget - reserve


def _prepare_images(
    data_dir: Path, workspace: Path, params: TrainParams, hooks: Hooks
) -> DatasetSummary:
    """Check and convert the images into the workspace, or reuse those an earlier attempt
    of the same job prepared."""
    images_dir = workspace / "images"
    summary_file = workspace / "dataset.json"
    if summary_file.exists() and images_dir.is_dir():
        summary = DatasetSummary.from_dict(json.loads(summary_file.read_text()))
        hooks.log("resuming: reusing the prepared images")
    else:
        hooks.log(f"checking images in {data_dir}")
        summary = prepare_dataset(data_dir, images_dir, params.image_size, params.validation_split)
        write_text_atomic(summary_file, json.dumps(summary.to_dict()))
    for skipped in summary.skipped:
        hooks.log(f"skipped {skipped.path}: {skipped.reason}")
    names = summary.class_names
    hooks.log(f"{summary.total} images in {len(names)} classes: {', '.join(names)}")
    return summary


@dataclass
class _Evaluation:
    y_true: Any
    y_pred: Any
    scores: Any
    metrics: dict[str, Any]
    trust: dict[str, Any]  # calibration and abstention (app.serving.calibration)


@dataclass
class _Run:
    """One training run, step by step: build the model, train its phases (resuming those
    an earlier attempt finished), evaluate it, describe it, save it."""

    params: TrainParams
    hooks: Hooks
    workspace: Path
    deadline: float | None
    summary: DatasetSummary
    datasets: tuple[Any, Any, list[str]]  # training, validation, validation files
    model: Any = None
    augmentation: AugmentConfig | None = None
    fine_tune_at: int | None = None
    fine_tune_record: dict[str, Any] = field(default_factory=dict)
    weights_by_class: dict[int, float] | None = None
    class_weight_reason: str = ""
    # The phases' records; those an earlier attempt finished come first.
    done: list[dict[str, Any]] = field(default_factory=list)
    refit_record: dict[str, Any] = field(default_factory=dict)
    # The training images' features, when the version answers unknown by the nearest one.
    bank: FeatureBank | None = None

    @property
    def phases_file(self) -> Path:
        return self.workspace / "phases.json"

    @property
    def history_file(self) -> Path:
        return self.workspace / "history.json"

    def build_model(self, weights: str | None) -> None:
        """The classifier on its base, and what the training of it will be: the fine-tuning
        depth and the class weights, each with its reason."""
        params = self.params
        self.augmentation = augment_config(params)
        self.model = self._new_model(weights)
        self.fine_tune_at, self.fine_tune_record = _fine_tune_choice(params, self.summary)
        self.weights_by_class, self.class_weight_reason = class_weights(
            self.summary.counts, params.class_weight
        )
        self.hooks.log(
            f"fine-tuning: {self.fine_tune_record['reason']};"
            f" class weights {self.class_weight_reason}"
        )

    def _new_model(self, weights: str | None) -> Any:
        """The untrained classifier: the base with ``weights``, the augmentation, a new head."""
        return build_classifier(
            self.params.base,
            len(self.summary.class_names),
            self.params.image_size,
            weights=weights,
            augmentation=self.augmentation,
            from_scratch=self.params.from_scratch,
        )

    def train_phases(self) -> None:
        """Run each phase in turn, skipping those an earlier attempt finished (their weights
        are where the next phase starts), and stop when the time budget is spent."""
        phases = _phases(self.params, self.fine_tune_at)
        finished = json.loads(self.phases_file.read_text()) if self.phases_file.exists() else []
        first = 0  # the epoch the next phase starts at
        head_best = float("inf")
        resume_from: Path | None = None  # the weights the last finished phase ended with
        trained = False  # whether this attempt ran a phase (else the model is untrained)
        for index, phase in enumerate(phases):
            folder = self.workspace / "phases" / phase.name
            later = phases[index + 1 :]
            if index < len(finished):
                self.done.append(finished[index])
                first += finished[index]["epochs_run"]
                head_best = finished[index]["best_val_loss"] or head_best
                if (folder / PHASE_RESULT).exists():  # not a phase the budget left out
                    resume_from = folder / PHASE_RESULT
                continue
            # Also between phases: the next phase's first batch (graph tracing) can take
            # longer than the supervisor waits for a cancelled job.
            _check_stop(self.hooks)
            trained = True
            if resume_from is not None and not (folder / "backup").exists():
                load_weights(self.model, resume_from)
            total = first + phase.max_epochs + sum(p.max_epochs for p in later)
            record, best = self._fit_phase(phase, folder, first, total, last_phase=not later)
            if phase.name == "fine_tune" and resume_from is not None and not best < head_best:
                # Fine-tuning never beat the head (its first epochs, with a fresh optimizer,
                # always lose some ground; patience lets it win it back): keep the head.
                load_weights(self.model, resume_from)
                record["kept"] = "head"
            self._after_phase(record)
            head_best = min(head_best, best)
            first += record["epochs_run"]
            self.done.append(record)
            out_of_time = self.deadline is not None and time.monotonic() >= self.deadline
            if out_of_time:
                # No time left for the next phases: recorded as stopped by the budget with
                # no epoch run, so a job resumed after this point does not train them either.
                self.done.extend(_skipped_phase(p) for p in later)
            resume_from = folder / PHASE_RESULT
            self._save_phase(folder)
            if out_of_time:
                break
        if not trained and resume_from is not None:
            load_weights(self.model, resume_from)  # every phase had finished before a restart

    def _fit_phase(
        self, phase: _Phase, folder: Path, first: int, total: int, last_phase: bool
    ) -> tuple[dict[str, Any], float]:
        """Fit one phase to its best epoch; returns its record (with the best weights
        restored) and its best validation loss."""
        params, hooks = self.params, self.hooks
        train_ds, val_ds, _ = self.datasets
        steps = len(train_ds)
        if phase.name == "fine_tune":
            unfreeze_from(self.model, self.fine_tune_at or 0)
        _compile(self.model, phase.learning_rate)
        phase_deadline = self.deadline
        if self.deadline is not None and not last_phase:
            phase_deadline = time.monotonic() + (self.deadline - time.monotonic()) * HEAD_SHARE
        last = first + phase.max_epochs
        if hooks.on_phase is not None:
            hooks.on_phase(phase.name, first, total)
        hooks.log(
            f"phase {phase.name}: at most epochs {first + 1}-{last},"
            f" learning rate {phase.learning_rate:g}"
        )
        best = _BestEpoch(folder, params.resolved_early_stopping_patience)
        stop_at = _Deadline(phase_deadline)
        schedule: keras.callbacks.Callback = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            factor=0.3,
            patience=max(1, params.resolved_early_stopping_patience // 2),
            min_lr=phase.learning_rate / 100,
            verbose=0,
        )
        decay = params.resolved_lr_schedule == "decay"
        if decay:
            # Fine-tuning warms up over its first epoch here too.
            warmup = steps if phase.name == "fine_tune" else 0
            schedule = _BudgetDecay(
                phase.learning_rate, steps, (first, last), phase_deadline, warmup_steps=warmup
            )
        callbacks: list[keras.callbacks.Callback] = [
            best,
            stop_at,
            schedule,
            _Backup(folder / "backup"),
            _EpochCallback(phase.name, total, hooks, self.history_file),
        ]
        # The files written at an epoch's end describe the same epoch: a stop waits until
        # all of them are written.
        callbacks = [_HoldStop(), *callbacks, _ReleaseStop()]
        if phase.name == "fine_tune" and not decay:
            callbacks.insert(0, _WarmUp(steps, phase.learning_rate))
        self.model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=first,
            epochs=last,
            shuffle=False,  # the dataset reshuffles itself every epoch
            verbose=0,
            class_weight=self.weights_by_class,
            callbacks=callbacks,
        )
        _check_stop(hooks)
        ran = max(best.epochs_run - first, 0)
        record: dict[str, Any] = {
            "phase": phase.name,
            "max_epochs": phase.max_epochs,
            "epochs_run": ran,
            "best_epoch": best.best_epoch or None,
            "best_val_loss": round(best.best, 6) if best.best_epoch else None,
            "stopped": _stop_reason(best, stop_at, ran, phase.max_epochs),
            "schedule": (
                "linear decay to zero over the phase's epochs or time"
                if isinstance(schedule, _BudgetDecay)
                else "divided by 3.3 on a validation loss plateau"
            ),
        }
        best.restore(self.model)
        return record, best.best

    def refit(self, weights: str | None) -> None:
        """When `_refit_choice` says so and the time budget allows: a model trained on
        every image, validation included, for the epochs the selection run chose (up to
        each phase's best epoch, at the rates it trained at), which becomes the run's
        model (AutoGluon's "refit_full"). When fine-tuning follows the head, it starts from
        the selection run's head and refits the fine-tuning; otherwise it starts afresh.
        Recorded in ``refit_record``.

        The validation figures, the calibration and the abstention threshold stay those of
        the selection run: the refit model has trained on the validation images, so they
        cannot measure it."""
        params, hooks = self.params, self.hooks
        wanted, reason = _refit_choice(params, self.summary)
        self.refit_record = {"done": False, "reason": reason}
        if not wanted:
            return
        plan, first = self._refit_plan()
        # When fine-tuning follows the head, the refit starts from the selection run's head
        # and trains what fine-tuning trains (the unfrozen stage and the head) on every
        # image: the head's own epochs on a frozen base were half the refit's time for
        # little (docs/training.md, "Small uploads").
        head = self.workspace / "phases" / "head" / PHASE_RESULT
        warm = [name for name, _ in plan] == ["head", "fine_tune"] and head.exists()
        if warm:
            plan = plan[1:]
        files = sorted(str(f) for f in (self.workspace / "images").glob("*/*.png"))
        trained_on = max(1, len(files) - len(self.datasets[2]))
        estimate = sum(h.get("seconds", 0.0) for _, e in plan for h in e) * len(files) / trained_on
        left = None if self.deadline is None else self.deadline - time.monotonic()
        skipped = None
        if not plan:
            skipped = "no phase chose an epoch"
        elif left is not None and estimate > left:
            skipped = (
                f"it would take about {estimate:.0f} s and {max(left, 0):.0f} s of the time"
                " budget are left"
            )
        if skipped is not None:
            self.refit_record["reason"] = f"skipped: {skipped}"
            hooks.log(f"refit skipped: {skipped}")
            return
        started = time.perf_counter()
        epochs = {name: len(e) for name, e in plan}
        hooks.log(
            f"refit on all {len(files)} images: "
            + ", ".join(f"{name.replace('_', '-')} {n} epochs" for name, n in epochs.items())
            + (", from the selection run's head" if warm else "")
        )
        keras.utils.set_random_seed(params.seed)
        model = self._new_model(weights)
        if warm:
            load_weights(model, head)
        data = load_training_files(files, params.image_size, params.batch_size, params.seed)
        steps = len(data)
        rates = {p.name: p.learning_rate for p in _phases(params, self.fine_tune_at)}
        epoch, total = first, first + sum(epochs.values())
        for name, chosen in plan:
            if name == "fine_tune":
                unfreeze_from(model, self.fine_tune_at or 0)
            rate = rates[name]
            _compile(model, rate)
            if hooks.on_phase is not None:
                hooks.on_phase("refit", epoch, total)
            schedule: list[keras.callbacks.Callback]
            warmup = steps if name == "fine_tune" else 0
            if params.resolved_lr_schedule == "decay":
                span = (epoch, epoch + len(chosen))
                schedule = [_BudgetDecay(rate, steps, span, None, warmup_steps=warmup)]
            else:
                schedule = [_Rates([h.get("learning_rate", rate) for h in chosen], epoch)]
                if warmup:
                    schedule.append(_WarmUp(steps, rate))
            model.fit(
                data,
                initial_epoch=epoch,
                epochs=epoch + len(chosen),
                shuffle=False,  # the dataset reshuffles itself every epoch
                verbose=0,
                class_weight=self.weights_by_class,
                callbacks=[*schedule, _EpochCallback("refit", total, hooks, self.history_file)],
            )
            _check_stop(hooks)
            epoch += len(chosen)
        if params.from_scratch:
            recompute_batchnorm_statistics(model, data)
        self.model = model
        if self.bank is not None:  # the same images, in the served model's features
            self.bank = self.feature_bank()
        self.refit_record.update(
            done=True,
            images=len(files),
            epochs=epochs,
            start="the selection run's head" if warm else "fresh",
            seconds=round(time.perf_counter() - started, 1),
            validation="of the selection run: the refit model trained on the validation images",
        )
        hooks.log(f"refit done in {self.refit_record['seconds']} s")

    def _refit_plan(self) -> tuple[list[tuple[str, list[dict[str, Any]]]], int]:
        """Per phase the refit trains, the selection run's epochs up to its best (their
        history entries); and the number of epochs the selection run ran."""
        history = {h["epoch"]: h for h in read_history(self.history_file)}
        plan: list[tuple[str, list[dict[str, Any]]]] = []
        first = 0
        for record in self.done:
            ran, best = record["epochs_run"], record["best_epoch"]
            if ran and best and record.get("kept") != "head":
                plan.append(
                    (record["phase"], [history.get(e, {}) for e in range(first + 1, best + 1)])
                )
            first += ran
        return plan, first

    def _after_phase(self, record: dict[str, Any]) -> None:
        """From scratch, the BatchNorm statistics are recomputed; then the phase is logged."""
        train_ds = self.datasets[0]
        if self.params.from_scratch and (
            batches := recompute_batchnorm_statistics(self.model, train_ds)
        ):
            record["batchnorm"] = f"statistics recomputed over {batches} training batches"
            self.hooks.log(f"BatchNorm statistics recomputed over {batches} training batches")
        self.hooks.log(
            f"phase {record['phase']} stopped ({record['stopped']}) after"
            f" {record['epochs_run']} epochs; best epoch {record['best_epoch']}"
            + (", fine-tuning did not help: keeping the head's weights" if "kept" in record else "")
        )

    def _save_phase(self, folder: Path) -> None:
        """The phase's weights and the phases' records, or neither (a resumed job trusts
        what it finds)."""
        result = folder / PHASE_RESULT
        partial = folder / f"partial.{PHASE_RESULT}"
        with interrupt.held():
            self.model.save_weights(partial)
            os.replace(partial, result)  # never half a file
            write_text_atomic(self.phases_file, json.dumps(self.done))

    def evaluate(self) -> _Evaluation:
        """The model's answers and metrics on the validation images (one pass, which also
        gives their features when the nearest-image rule needs them)."""
        nearest = self.params.abstain_score == "nearest"
        if nearest:
            truths: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]

            def images() -> Any:
                for x, y in self.datasets[1]:
                    truths.append(np.asarray(y, dtype=np.int64))
                    yield x

            probs, val_features = features_of(self.model, images())
            y_true = np.concatenate(truths)
        else:
            y_true, probs = predict_probabilities(self.model, self.datasets[1])
        y_pred, scores = probs.argmax(axis=-1), probs.max(axis=-1)
        metrics = classification_metrics(y_true, y_pred, self.summary.class_names)
        self.hooks.log(
            f"validation accuracy {metrics['accuracy']:.4f} on {metrics['images']} images"
        )
        trust = calibration_record(probs, y_true, self.params.abstain_keep_share)
        calibration, abstention = trust["calibration"], trust["abstention"]
        self.hooks.log(
            f"calibration: temperature {calibration['temperature']:g}, expected calibration"
            f" error {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}"
        )
        if nearest:
            trust["abstention"] = abstention = self._nearest_abstention(abstention, val_features)
        else:
            self.hooks.log(
                f"unknown below a calibrated top score of {abstention['threshold']:.3f}"
                f" (keeps {abstention['kept_share']:.1%} of the validation images)"
            )
        if self.params.negative_class is not None:
            abstention["negative_class"] = self.params.negative_class
        return _Evaluation(y_true, y_pred, scores, metrics, trust)

    def _nearest_abstention(
        self, top_score: dict[str, Any], val_features: np.ndarray
    ) -> dict[str, Any]:
        """The nearest-neighbour abstention (`app.serving.features`): the training images'
        features as the bank, the threshold on the validation images' similarity to it.
        The top score's threshold is kept beside it, for a server that cannot serve the
        features."""
        self.bank = self.feature_bank()
        record = nearest_record(self.bank, val_features, self.params.abstain_keep_share)
        record["top_score_threshold"] = top_score["threshold"]
        self.hooks.log(
            f"unknown below a similarity of {record['threshold']:.3f} to the nearest of"
            f" {record['bank_images']} training images (keeps {record['kept_share']:.1%} of"
            " the validation images)"
        )
        return record

    def feature_bank(self) -> FeatureBank:
        """The features of the images the selection run trained on (a seeded sample of
        `MAX_BANK_IMAGES` when more), from the model as it is now."""
        trained_on = _training_files(self.workspace / "images", self.datasets[2])
        files = seeded_sample(trained_on, MAX_BANK_IMAGES, self.params.seed)
        size, step = self.params.image_size, self.params.batch_size
        batches = (read_prepared(files[i : i + step], size) for i in range(0, len(files), step))
        _, features = features_of(self.model, batches)
        return FeatureBank.of(features, classifier_layer(self.model).name)

    def describe(
        self,
        evaluation: _Evaluation,
        source: str,
        weights: str | None,
        stored: StoredDataset | None,
        started: float,
        health: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The version's metadata: what it is, how it trained and why, how well it did."""
        params, names = self.params, self.summary.class_names
        by_class = self.weights_by_class or {}
        training = {
            "phases": self.done,
            "fine_tune_at": self.fine_tune_record,
            "class_weight": {
                "mode": params.class_weight,
                "weights": {names[i]: round(w, 4) for i, w in by_class.items()},
                "reason": self.class_weight_reason,
            },
            "augmentation": asdict(self.augmentation) if self.augmentation is not None else None,
            "early_stopping_patience": params.resolved_early_stopping_patience,
            "refit": self.refit_record,
            "max_minutes": params.max_minutes or None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        metadata = {
            "source": source,
            "architecture": params.base,
            "base": params.base,
            "class_names": names,
            "image_size": params.image_size,
            "pretrained": None if params.from_scratch else weights,
            "params": params.model_dump(),
            "training": training,
            "history": sorted(read_history(self.history_file), key=lambda h: h["epoch"]),
            "metrics": evaluation.metrics,
            **evaluation.trust,
            "dataset": _dataset_record(self.summary, stored, self.datasets[2], self.sources),
            **self.hooks.extra_metadata,
        }
        if health is not None:
            metadata["label_health"] = {
                "suspects": health["suspects_found"],
                "near_duplicates": health["duplicates_found"],
                "out_of_fold_accuracy": health["out_of_fold_accuracy"],
                "seconds": round(sum(health["seconds"].values()), 1),
            }
        return metadata

    @property
    def sources(self) -> dict[str, Any]:
        sources_file = self.workspace / "images" / SOURCES_FILE
        return json.loads(sources_file.read_text()) if sources_file.exists() else {}

    def label_health(self, stored: StoredDataset | None) -> dict[str, Any]:
        """The label-health report of the images the version trained and validated on
        (`app.training.health`), from the model as it is now."""
        self.hooks.log("checking the labels: suspects, near duplicates, confused classes")
        names, sources = self.summary.class_names, self.sources
        images = []
        for file in sorted((self.workspace / "images").glob("*/*.png")):
            source = sources.get(
                f"{file.parent.name}/{file.name}", f"{file.parent.name}/{file.name}"
            )
            image_id = stored.ids.get(source, source) if stored is not None else source
            images.append(
                HealthImage(image_id, names[int(file.parent.name)], source, file.read_bytes)
            )
        report = label_health(self.model, images, names, self.params.image_size)
        if stored is not None:
            report["dataset"] = {"name": stored.name, "version": stored.version}
        self.hooks.log(
            f"label health: {report['suspects_found']} suspect labels,"
            f" {report['duplicates_found']} near-duplicate pairs"
            f" ({sum(report['seconds'].values()):.1f} s)"
        )
        return report

    def saver(
        self,
        evaluation: _Evaluation,
        metadata: dict[str, Any],
        study: bool,
        health: dict[str, Any] | None = None,
    ) -> Callable[[Path], None]:
        """What writes the version's files into its folder: the model, the validation
        samples, the held-out set, the label-health report and (``study``) the precision
        study."""
        val_files = self.datasets[2]
        images_dir = self.workspace / "images"
        image_size = self.params.image_size

        def save(folder: Path) -> None:
            self.model.save(folder / MODEL_FILE)
            write_validation_samples(
                folder,
                val_files,
                evaluation.y_true,
                evaluation.y_pred,
                evaluation.scores,
                self.sources,
            )
            # The held-out set and the precision study go with the version, so serving can
            # use the fastest precision that keeps its accuracy (app.serving.precision).
            heldout = heldout_from_prepared(
                val_files, _training_files(images_dir, val_files), image_size
            )
            heldout.save(folder)
            if self.bank is not None:
                self.bank.save(folder)
            if health is not None:
                write_text_atomic(folder / HEALTH_FILE, json.dumps(health))
            if study:
                self.hooks.log("measuring the version's accuracy at each inference precision")
                metadata["precision_study"] = study_or_fallback(
                    folder / MODEL_FILE, image_size, heldout, log=self.hooks.log
                )
            metadata["heldout"] = heldout.summary()

        return save


def _skipped_phase(phase: _Phase) -> dict[str, Any]:
    return {
        "phase": phase.name,
        "max_epochs": phase.max_epochs,
        "epochs_run": 0,
        "best_epoch": None,
        "best_val_loss": None,
        "stopped": "time_budget",
    }


@dataclass
class StoredDataset:
    """A stored dataset version laid out for training: ``ids`` maps each file (relative
    to the folder, ``<class>/<file>``) to its image id."""

    name: str
    version: int
    ids: dict[str, str]


def _dataset_record(
    summary: DatasetSummary,
    stored: StoredDataset | None,
    val_files: list[str],
    sources: dict[str, str],
) -> dict[str, Any]:
    """What the version trained on: the check's summary, and for a stored dataset its
    name, version and the ids of the validation images (the rest trained it)."""
    record: dict[str, Any] = {
        **summary.to_dict(),
        "name": None,
        "version": None,
        "per_class": summary.counts,
    }
    if stored is not None:
        # Prepared images are <class index>/<n>.png, keys of ``sources``.
        validation = (sources.get(f"{Path(f).parent.name}/{Path(f).name}") for f in val_files)
        record.update(
            name=stored.name,
            version=stored.version,
            validation=sorted(stored.ids[s] for s in validation if s in stored.ids),
        )
    return record


def _training_files(images_dir: Path, val_files: list[str]) -> list[str]:
    """The prepared images the model trained on (every one not in the validation split)."""
    held = {(Path(f).parent.name, Path(f).name) for f in val_files}
    return [
        str(f) for f in sorted(images_dir.glob("*/*.png")) if (f.parent.name, f.name) not in held
    ]


def remove_workspace(workspace: Path) -> None:
    shutil.rmtree(workspace, ignore_errors=True)


def recompute_batchnorm_statistics(model: keras.Model, dataset: Any) -> int:
    """Set every BatchNorm layer's moving mean and variance to their average over
    ``dataset`` (batches of `(images, labels)`) under the model's final weights ("precise
    BatchNorm", Wu and Johnson 2021, "Rethinking 'Batch' in BatchNorm"). Returns the number
    of batches used.

    During training the moving statistics are an exponential average over the last few
    hundred steps, taken while the weights were still changing; a network trained from
    scratch for a few hundred steps is then evaluated with statistics that belong to
    earlier weights. Augmentation is left out (the statistics are those of the images the
    model will see when it serves); each layer normalises with its batch's statistics, as in
    training, while its own are averaged.
    """
    from app.nets.transfer import batchnorm_layers, inference_model

    net = inference_model(model)
    layers = batchnorm_layers(net)
    if not layers:
        return 0
    momenta = [bn.momentum for bn in layers]
    sums = [(np.zeros(bn.moving_mean.shape), np.zeros(bn.moving_variance.shape)) for bn in layers]
    batches = 0
    try:
        for bn in layers:
            bn.momentum = 0.0  # each call leaves exactly its batch's statistics
        for images, _ in dataset:
            net(images, training=True)
            for (mean, var), bn in zip(sums, layers, strict=True):
                mean += np.asarray(bn.moving_mean)
                var += np.asarray(bn.moving_variance)
            batches += 1
    finally:
        for bn, momentum in zip(layers, momenta, strict=True):
            bn.momentum = momentum
    if batches:
        for (mean, var), bn in zip(sums, layers, strict=True):
            bn.moving_mean.assign(mean / batches)
            bn.moving_variance.assign(var / batches)
    return batches
