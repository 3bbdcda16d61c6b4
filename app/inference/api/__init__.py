"""Blueprints, one per concern."""

from __future__ import annotations

import time

import numpy as np
from flask import Flask, current_app

from .. import metrics
from ..errors import ApiError
from ..runtime import ModelRuntime


def runtime() -> ModelRuntime:
    return current_app.extensions["funfleet.runtime"]


def ready_runtime() -> ModelRuntime:
    rt = runtime()
    if not rt.ready:
        raise ApiError(503, "model_not_ready", rt.error or "the model is still loading")
    return rt


def infer(rt: ModelRuntime, batch: np.ndarray) -> np.ndarray:
    """The one path from a prepared batch to probabilities, with its metrics."""
    started = time.perf_counter()
    probs = rt.predict_batch(batch)
    metrics.INFERENCE.observe(time.perf_counter() - started)
    metrics.BATCH.observe(len(batch))
    metrics.INSTANCES.labels(rt.release.name, rt.release.version).inc(len(batch))
    return probs


def register_blueprints(app: Flask) -> None:
    from . import health, predict, tfserving, ui

    for module in (health, predict, tfserving, ui):
        app.register_blueprint(module.bp)
