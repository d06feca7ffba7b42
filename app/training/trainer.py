"""Two-phase training: the head on a frozen base, then fine-tuning from a chosen layer.

`train` takes a directory of class folders and writes a new registry version. It can run
in a workspace that survives a crash: each phase backs up its state every epoch
(`keras.callbacks.BackupAndRestore`), and a second call with the same workspace resumes
from the last completed epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from app.data.datasets import SOURCES_FILE, DatasetSummary, load_datasets, prepare_dataset
from app.nets.transfer import AugmentConfig, build_classifier, unfreeze_from
from app.registry import MODEL_FILE, ModelRegistry
from app.training.evaluate import (
    classification_metrics,
    predict_dataset,
    write_validation_samples,
)
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
        history = read_history(self.history_file)
        history = [h for h in history if h["epoch"] != epoch + 1]
        history.append(
            {
                "epoch": epoch + 1,
                "phase": self.phase,
                "seconds": round(seconds, 2),
                "ended_at": round(time.time(), 3),  # Unix time: when the epoch's point is due
                **values,
            }
        )
        self.history_file.write_text(json.dumps(history))
        if self.hooks.on_epoch is not None:
            self.hooks.on_epoch(report)


def _check_stop(hooks: Hooks) -> None:
    if hooks.should_stop is not None and hooks.should_stop():
        raise TrainingCancelled("training was cancelled")


def read_history(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return []


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )


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
) -> TrainResult:
    """Train a classifier on ``data_dir`` and write it as a new version of ``name``.

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
    images_dir = workspace / "images"
    summary_file = workspace / "dataset.json"
    history_file = workspace / "history.json"
    if summary_file.exists() and images_dir.is_dir():
        summary = DatasetSummary.from_dict(json.loads(summary_file.read_text()))
        hooks.log("resuming: reusing the prepared images")
    else:
        hooks.log(f"checking images in {data_dir}")
        summary = prepare_dataset(data_dir, images_dir, params.image_size, params.validation_split)
        summary_file.write_text(json.dumps(summary.to_dict()))
    for skipped in summary.skipped:
        hooks.log(f"skipped {skipped.path}: {skipped.reason}")
    class_names = summary.class_names
    hooks.log(f"{summary.total} images in {len(class_names)} classes: {', '.join(class_names)}")

    train_ds, val_ds, val_files = load_datasets(
        images_dir,
        len(class_names),
        params.image_size,
        params.batch_size,
        params.validation_split,
        params.seed,
    )
    model = build_classifier(
        params.base,
        len(class_names),
        params.image_size,
        weights=weights,
        augmentation=AugmentConfig() if params.augment else None,
        from_scratch=params.from_scratch,
    )
    total = params.total_epochs
    head_done = workspace / "head.done"
    phases: list[tuple[str, int, int, float]] = []
    if params.from_scratch:
        phases.append(("train", 0, params.epochs, params.learning_rate))
    else:
        phases.append(("head", 0, params.epochs, params.learning_rate))
        if params.fine_tune_epochs:
            phases.append(
                ("fine_tune", params.epochs, total, params.resolved_fine_tune_learning_rate)
            )

    for phase, first, last, learning_rate in phases:
        # Also between phases: the next phase's first batch (graph tracing) can take longer
        # than the supervisor waits for a cancelled job.
        _check_stop(hooks)
        backup = workspace / "backup" / phase
        if phase == "fine_tune":
            unfreeze_from(model, params.resolved_fine_tune_at)
        elif head_done.exists():
            continue  # resumed after the head phase had finished
        _compile(model, learning_rate)
        if phase == "fine_tune" and not backup.exists() and head_done.exists():
            model.load_weights(workspace / "head.weights.h5")
        if hooks.on_phase is not None:
            hooks.on_phase(phase, first, total)
        hooks.log(f"phase {phase}: epochs {first + 1}-{last}, learning rate {learning_rate:g}")
        model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=first,
            epochs=last,
            shuffle=False,  # the dataset reshuffles itself every epoch
            verbose=0,
            callbacks=[
                # Two checkpoints: a process killed while writing one leaves the other.
                keras.callbacks.BackupAndRestore(
                    str(backup), delete_checkpoint=False, double_checkpoint=True
                ),
                _EpochCallback(phase, total, hooks, history_file),
            ],
        )
        if phase == "head":
            partial = workspace / "head.partial.weights.h5"
            model.save_weights(partial)
            os.replace(partial, workspace / "head.weights.h5")  # never half a file
            head_done.touch()

    y_true, y_pred, scores = predict_dataset(model, val_ds)
    metrics = classification_metrics(y_true, y_pred, class_names)
    history = sorted(read_history(history_file), key=lambda h: h["epoch"])
    hooks.log(f"validation accuracy {metrics['accuracy']:.4f} on {metrics['images']} images")
    metadata = {
        "source": source,
        "architecture": params.base,
        "base": params.base,
        "class_names": class_names,
        "image_size": params.image_size,
        "pretrained": None if params.from_scratch else weights,
        "params": params.model_dump(),
        "history": history,
        "metrics": metrics,
        "dataset": summary.to_dict(),
        **hooks.extra_metadata,
    }
    sources_file = images_dir / SOURCES_FILE
    sources = json.loads(sources_file.read_text()) if sources_file.exists() else {}

    def save(folder: Path) -> None:
        model.save(folder / MODEL_FILE)
        write_validation_samples(folder, val_files, y_true, y_pred, scores, sources)

    version = registry.write_version(name, save, metadata, activate=activate)
    hooks.log(f"wrote {name} version {version}")
    return TrainResult(
        name, version, metrics, history, summary.to_dict(), time.perf_counter() - started
    )


def remove_workspace(workspace: Path) -> None:
    shutil.rmtree(workspace, ignore_errors=True)
