"""Service settings, read from ``CONVSERVE_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. The README lists each with its default."""

    # An empty variable (as docker-compose passes an unset one) means the default.
    model_config = SettingsConfigDict(
        env_prefix="CONVSERVE_", extra="ignore", env_ignore_empty=True
    )

    models_dir: Path = Path("models")
    data_dir: Path = Path("var")
    served_models: Annotated[list[str], NoDecode] = ["resnet50", "mobilenet_v2"]
    default_model: str = "mobilenet_v2"
    # "imagenet" (Keras' download/cache), "none" (random init) or a path to a weights file.
    pretrained: str = "imagenet"
    api_key: str | None = None
    # Serve on an address other machines can reach with no API key (every caller is then an
    # admin: can train, promote, delete, export). Without it `serve` refuses to.
    allow_open: bool = False
    # Predictions (/predict, TF Serving, KServe) open to callers without a key; false: they
    # need a key with the predict scope (once keys are on).
    public_predictions: bool = True
    # Reads (models, jobs and their events, datasets, rollouts, reports) open to callers
    # without a key once keys are on; false (the default): they need a key (predict scope).
    # Photos (dataset images, captured images, validation samples) need a train key either way.
    public_reads: bool = False
    # Days the audit log keeps an entry (older ones are dropped as new ones are written).
    audit_days: int = Field(90, ge=1)
    # Quotas per caller (a key, or an address without one); a key may carry its own. Unset:
    # none. predict_rate is a `limits` string ("600/minute", "20/second").
    predict_rate: str | None = None
    uploads_per_day: int | None = Field(None, ge=1)
    jobs_per_day: int | None = Field(None, ge=1)
    # Bytes a caller may keep in datasets ("2GB", "500 MiB"); unset: no quota.
    stored_bytes: ByteSize | None = None
    # Where the quota counters live: a Redis URL shares them between replicas; unset: the
    # broker's Redis (broker_url) when there is one, else this process.
    rate_limit_url: str | None = None
    backend: Literal["auto", "keras", "openvino"] = "auto"
    # OpenVINO's inference precision. "auto": each version's own choice, the fastest that
    # keeps its held-out accuracy (its precision study, app.serving.precision), f32 for a version
    # without one; "f32", "bf16" or "int8" force one for every version.
    inference_precision: Literal["auto", "f32", "bf16", "int8"] = "auto"
    # Run the precision study when a version is written (training jobs, `train`).
    precision_study: bool = True
    # Jobs write the label-health report of what they trained on (unless a job says
    # label_health=false); false: no job does.
    label_health: bool = True
    # Input size of the bootstrap (ImageNet) versions. Tests use a tiny size.
    bootstrap_image_size: int = Field(224, ge=32, le=1024)

    # Largest batch run at once; unset: the backend's best on a small CPU (Keras 16,
    # OpenVINO 4, see KerasPredictor and OpenVINOPredictor).
    max_batch_size: int | None = Field(None, ge=1, le=256)
    batch_timeout_ms: float = Field(5.0, ge=0, le=1000)
    # Images waiting for a model, across requests; beyond it /predict answers 503.
    max_queue_size: int = Field(256, ge=1)
    max_files_per_request: int = Field(32, ge=1)
    # Images one request may ask Grad-CAM maps for (explain=gradcam): each costs a forward
    # and a backward pass of the Keras model (docs/benchmarks.md, "Explanations").
    max_explained_images: int = Field(8, ge=0)
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    # Seconds between reads of the registry's active pointers (picks up activations
    # made by another replica sharing models/). 0 turns polling off.
    registry_poll_seconds: float = Field(2.0, ge=0)
    # A built-in model whose first version could not be written (no weights: offline, no
    # cache) is tried again after this many seconds, then twice as long each time, up to
    # an hour; 0 never retries. Retries run on the registry poll.
    bootstrap_retry_seconds: float = Field(60.0, ge=0)
    decode_threads: int = Field(2, ge=1, le=64)
    # Shutdown (app/shutdown.py): after SIGTERM, answer 503 to new requests for this long
    # (a load balancer sees /readyz fail and moves away), then stop listening and give the
    # requests in flight up to graceful_timeout_seconds. docker-compose.yml's
    # stop_grace_period covers both plus the job processes' stop.
    shutdown_drain_seconds: float = Field(3.0, ge=0, le=300)
    graceful_timeout_seconds: int = Field(30, ge=1, le=3600)

    # Fine-tuning jobs.
    run_jobs: bool = True  # start job processes from this service instance
    max_concurrent_jobs: int = Field(1, ge=1, le=16)
    max_queued_jobs: int = Field(8, ge=1)
    # TensorFlow threads of a job process. "auto": one per core this process may use. A job
    # runs at a lower CPU priority than the service (app.jobs.runner.limit_threads), so
    # predictions take the cores first while it trains and it has them all otherwise.
    job_threads: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    # How much lower a job process's CPU priority is than the service's (Unix nice, 0-19).
    job_nice: int = Field(19, ge=0, le=19)
    max_job_attempts: int = Field(3, ge=1, le=20)
    # The job store: SQLite under data_dir by default; a PostgreSQL URL
    # (postgresql://user:password@host:5432/db) shares it between replicas and workers.
    database_url: str | None = None
    # s3://bucket/prefix: the model registry in S3-compatible storage (endpoint and keys from
    # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); models_dir is its cache.
    registry_url: str | None = None
    # s3://bucket/prefix: a job's dataset and resume state in S3-compatible storage, so a
    # worker on any host can run or resume it (app.jobs.files); unset: the data folder only.
    job_files_url: str | None = None
    # A Redis URL (redis://host:6379/0): jobs go through this queue to training workers
    # (python -m app worker) and the API replicas never train.
    broker_url: str | None = None
    # A running job's lease: its owner renews it every second or so; a job whose lease ran
    # out (owner killed, host lost) is queued again when the store is shared.
    job_lease_seconds: float = Field(30.0, ge=1, le=3600)
    keep_job_files: bool = False  # keep a finished job's dataset and workspace
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    max_archive_bytes: int = Field(4 * 1024**3, ge=1)  # uncompressed
    max_archive_files: int = Field(50_000, ge=1)
    min_images_per_class: int = Field(5, ge=1)
    # Stored datasets (/datasets): the most images and image bytes one dataset may hold
    # (413 past them).
    max_dataset_images: int = Field(100_000, ge=1)
    max_dataset_bytes: int = Field(20 * 1024**3, ge=1)
    # Captured predictions (PUT /models/{name}/capture): the most image bytes kept across
    # every model (a capture past it is dropped and counted), and the images waiting to be
    # written (past it a capture is dropped: a prediction never waits for one).
    max_capture_bytes: int = Field(1024**3, ge=0)
    capture_queue_size: int = Field(256, ge=1)

    @field_validator("predict_rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value:
            from limits import parse

            try:
                parse(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a rate: write it as 600/minute, 20/second, 5000/hour"
                ) from None
        return value

    @field_validator("served_models", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().lower() == "none":  # no built-in model: serve the registry
                return []
            return [name.strip() for name in value.split(",") if name.strip()]
        return value


def cores_available() -> int:
    """The cores this process may run on (a container's cpuset included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@lru_cache
def get_settings() -> Settings:
    return Settings()
