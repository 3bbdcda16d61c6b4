"""Prometheus metrics that stay correct under several uWSGI workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the uWSGI unit sets it to a directory under its
RuntimeDirectory, emptied at every start), each worker writes its own files and ``/metrics``
sums them with the multiprocess collector. Without it, the process registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("funfleet_http_requests", "HTTP requests handled", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "funfleet_http_request_duration_seconds", "Time spent handling a request", ["endpoint"], buckets=LATENCY_BUCKETS
)
INFERENCE = Histogram(
    "funfleet_inference_duration_seconds", "Time spent in the compiled model call", buckets=LATENCY_BUCKETS
)
BATCH = Histogram("funfleet_inference_batch_size", "Instances per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
INSTANCES = Counter("funfleet_predictions", "Instances predicted", ["model", "version"])
MODEL_READY = Gauge(
    "funfleet_model_ready",
    "1 when this worker has its model loaded and warm",
    ["model", "version"],
    multiprocess_mode="max",
)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
