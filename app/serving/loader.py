"""Loading a version to serve: its precision, its runtime (Keras or OpenVINO), warm-up and
its batcher, in threads the operating system can name."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from setproctitle import setthreadtitle

from app.config import Settings
from app.serving.batcher import Batcher
from app.serving.features import SCORE, FeatureBank, with_similarity
from app.serving.metrics import ServiceMetrics
from app.serving.openvino_backend import IR_DIR, IR_FILE, convert_to_ir
from app.serving.precision import serving_precision
from app.serving.predictor import Predictor, make_predictor, warm_up
from app.storage.registry import ModelRegistry

log = logging.getLogger("convserve.models")


@dataclass
class LoadedVersion:
    name: str
    version: int
    metadata: dict[str, Any]
    predictor: Predictor
    batcher: Batcher
    precision_reason: str = ""  # why it serves at its precision
    model_path: Path | None = None
    # Its Keras model cut for Grad-CAM, loaded at the first explained request.
    explainer: Any = None
    # Its training images' features, when it answers unknown by the nearest one's
    # similarity: the batcher's rows then end with each image's similarity.
    bank: FeatureBank | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])


# What the operating system calls the service's threads (names are 15 characters at most).
THREAD_PREFIX = "cs-"


def named_pool(workers: int, role: str) -> ThreadPoolExecutor:
    """A thread pool whose threads the operating system knows as ``cs-<role>`` (``top -H``,
    ``/proc/<pid>/task/*/comm``; the serving benchmark splits the server's CPU by them). A
    runtime's own worker threads take the name of the thread that started them: OpenVINO's
    are ``cs-load`` (they start while a version is compiled)."""
    return ThreadPoolExecutor(
        workers,
        thread_name_prefix=role,
        initializer=setthreadtitle,
        initargs=(f"{THREAD_PREFIX}{role}",),
    )


class VersionLoader:
    """Loads versions in its own thread (the event loop keeps serving) and runs their
    batches in the inference threads."""

    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: ServiceMetrics):
        self.settings, self.registry, self.metrics = settings, registry, metrics
        # Runtimes spread one batch over every core; two threads let the next batch be
        # handed over while one runs (a predictor's `parallelism` caps its own share).
        self.infer = named_pool(2, "infer")
        self.loader = named_pool(1, "load")

    def shutdown(self) -> None:
        for pool in (self.infer, self.loader):
            pool.shutdown(wait=True)

    async def load(self, name: str, version: int) -> LoadedVersion:
        """Load and warm up a version in the loader thread; the event loop keeps serving."""
        metadata = self.registry.metadata(name, version)
        size = int(metadata["image_size"])
        path = self.registry.model_path(name, version)

        precision, why = serving_precision(self.settings.inference_precision, metadata)

        def load() -> tuple[Predictor, int, FeatureBank | None]:
            bank = self._bank(name, version, metadata)
            predictor = make_predictor(
                path, size, self.settings.backend, precision, features=bank is not None
            )
            if predictor.backend == "openvino":  # its IR: built by one host, fetched by all
                self.registry.build_once(
                    name, version, f"{IR_DIR}/{IR_FILE}", lambda: convert_to_ir(path)
                )
            predictor.load()
            max_batch = self.settings.max_batch_size or predictor.batch_size
            warm_up(predictor, max_batch)
            return predictor, max_batch, bank

        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        predictor, max_batch, bank = await loop.run_in_executor(self.loader, load)
        note = getattr(predictor, "precision_note", None)
        if predictor.backend == "keras":
            why = "the Keras backend runs f32"
        elif note:
            why = f"{why}; serving {predictor.precision}: {note}"
        log.info(
            "loaded %s v%d in %.1fs (%s %s: %s)",
            name,
            version,
            time.perf_counter() - started,
            predictor.backend,
            predictor.precision,
            why,
        )

        def on_batch(n: int, seconds: float) -> None:
            self.metrics.batch_size.labels(name, str(version)).observe(n)
            self.metrics.batch_seconds.labels(name, str(version)).observe(seconds)

        run: Callable[[np.ndarray], np.ndarray] = predictor.predict
        if bank is not None:  # each row then ends with the image's similarity
            run = with_similarity(predictor.predict_features, bank)
        batcher = Batcher(
            run,
            self.infer,
            max_batch_size=max_batch,
            timeout=self.settings.batch_timeout_ms / 1000,
            max_queue=self.settings.max_queue_size,
            on_batch=on_batch,
            max_inflight=predictor.parallelism,
        )
        batcher.start()
        return LoadedVersion(name, version, metadata, predictor, batcher, why, path, bank=bank)

    def _bank(self, name: str, version: int, metadata: dict[str, Any]) -> FeatureBank | None:
        """The version's feature bank when it answers unknown by the nearest training
        image; a missing or damaged one falls back to the top score's threshold."""
        if (metadata.get("abstention") or {}).get("method") != SCORE:
            return None
        try:
            bank = FeatureBank.read(self.registry.version_dir(name, version))
        except ValueError as exc:
            bank, reason = None, str(exc)
        else:
            reason = "its features file is missing"
        if bank is None:
            log.warning(
                "%s v%d: %s; it answers unknown by its top score instead", name, version, reason
            )
        return bank


def describe(exc: BaseException) -> str:
    """An error's first line, short enough for a status field."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return message.splitlines()[0][:300]
