"""Prometheus metrics of one service instance (its own registry, so tests can make many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "convserve_predict_requests_total",
            "Prediction requests by model, version, HTTP status and protocol.",
            ["model", "version", "status", "protocol"],
            registry=r,
        )
        self.latency = Histogram(
            "convserve_predict_latency_seconds",
            "Prediction request latency by model, version, HTTP status and protocol.",
            ["model", "version", "status", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "convserve_predict_images_total",
            "Images classified.",
            ["model", "version"],
            registry=r,
        )
        self.unknown = Counter(
            "convserve_predict_unknown_total",
            "Images answered as unknown (under the version's abstention threshold, or its"
            " negative class).",
            ["model", "version"],
            registry=r,
        )
        self.captures = Counter(
            "convserve_captures_total",
            "Predictions offered for capture, by model and outcome: kept, or dropped and why"
            " (busy, max_per_hour, max_images, max_bytes, storage).",
            ["model", "outcome"],
            registry=r,
        )
        self.shadow = Counter(
            "convserve_shadow_predictions_total",
            "Images a rollout's candidate (shadow) or its active version (canary) was run on"
            " off the request path, by model, candidate version and outcome: agree,"
            " disagree (top classes), error, skipped (too many in flight).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.shadow_latency = Histogram(
            "convserve_shadow_latency_seconds",
            "Time of a shadow run of a rollout's candidate (decode and classify).",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "convserve_batch_size",
            "Images per model batch.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "convserve_batch_seconds",
            "Time of one model batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "convserve_queue_depth", "Images waiting for a model.", ["model"], registry=r
        )
        self.active_version = Gauge(
            "convserve_model_active_version", "Version being served.", ["model"], registry=r
        )
        self.model_ready = Gauge(
            "convserve_model_ready", "1 when the model serves, else 0.", ["model"], registry=r
        )
        self.jobs = Gauge(
            "convserve_finetune_jobs", "Fine-tuning jobs by status.", ["status"], registry=r
        )
