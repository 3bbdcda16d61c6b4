"""Blueprints, one per concern."""

from __future__ import annotations

import time

import numpy as np
from flask import Flask, current_app

from .. import metrics
from ..errors import ApiError
from ..runtime import LabelNotFound, ModelNotFound, ModelRuntime, ServedModel


def runtime() -> ModelRuntime:
    return current_app.extensions["funfleet.runtime"]


def ready_runtime() -> ModelRuntime:
    rt = runtime()
    if not rt.ready:
        raise ApiError(503, "model_not_ready", rt.error or "the model is still loading")
    return rt


def find_model(name: str | None, version: str | None = None, label: str | None = None) -> ServedModel:
    """A served model version, by version or version label, or the API's 404 (protocols with
    their own 404 shape catch ModelNotFound themselves)."""
    if version is not None and label is not None:
        raise ApiError(400, "invalid_request", "give a version or a version label, not both")
    try:
        return ready_runtime().get(name, version, label)
    except LabelNotFound as exc:
        raise ApiError(404, "label_not_found", f"Unrecognized servable version label: {exc.label}") from exc
    except ModelNotFound as exc:
        if exc.version is None:
            raise ApiError(404, "model_not_found", f"no model named {exc.name!r} is served here") from exc
        raise ApiError(404, "version_not_found", f"model {exc.name!r} has no version {exc.version!r} here") from exc


def infer(model: ServedModel, batch: np.ndarray) -> list[np.ndarray]:
    """The one path from a prepared batch to the model's outputs, with its metrics."""
    started = time.perf_counter()
    outputs = model.predict(batch)
    metrics.INFERENCE.observe(time.perf_counter() - started)
    if not model.batched:
        metrics.BATCH.observe(len(batch))
    metrics.INSTANCES.labels(model.name, model.version).inc(len(batch))
    release = model.release
    if release.task == "classification" and release.labels:
        scores = np.asarray(outputs[0])
        top = scores.reshape(len(scores), -1).argmax(axis=1).tolist() if scores.ndim >= 1 and len(scores) else []
        metrics.observe_classes(model.name, model.version, release.labels, top)
    elif model.output_buckets and len(outputs):
        values = np.asarray(outputs[0])
        # Numbers only: buckets declared on a model answering strings count nothing, never fail a request.
        if values.ndim >= 1 and len(values) and np.issubdtype(values.dtype, np.number):
            first = values.reshape(len(values), -1)[:, 0].astype(np.float64, copy=False)
            metrics.observe_outputs(model.name, model.version, model.output_buckets, first)
    return outputs


def register_blueprints(app: Flask) -> None:
    from . import health, kserve, predict, tfserving, ui

    for module in (health, predict, tfserving, kserve, ui):
        app.register_blueprint(module.bp)
