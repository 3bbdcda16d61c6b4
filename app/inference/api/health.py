"""Liveness, readiness, metadata and metrics."""

from __future__ import annotations

import os
import platform
import socket

from flask import Blueprint, Response, current_app, jsonify

from .. import __version__, metrics
from ..runtime import ServedModel, TensorInfo, resident_bytes
from . import runtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    rt = runtime()
    if not rt.ready:
        response = jsonify(status="loading" if rt.error is None else "failed", error=rt.error)
        response.status_code = 503
        return response
    return jsonify(
        status="ready",
        model=rt.release.name,
        version=rt.release.version,
        device=rt.info.device,
        release=rt.release_id,
        models=[_summary(rt.get(name), rt.versions(name), rt.labels.get(name, {})) for name in rt.models],
    )


def _summary(model: ServedModel, versions: list[str], labels: dict[str, str]) -> dict:
    """What a client (the upload page) needs to pick a model and send it an instance."""
    spec = model.release.input
    summary = {"name": model.name, "versions": versions, "input": spec.kind, "task": model.release.task}
    if labels:
        summary["labels"] = dict(sorted(labels.items()))
    if getattr(spec, "features", ()):
        summary["features"] = list(spec.features)
    return summary


def _describe(model: ServedModel) -> dict:
    def tensors(infos: tuple[TensorInfo, ...]) -> list[dict]:
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in infos]

    return {
        **model.release.describe(),
        "signature": {"inputs": tensors(model.signature.inputs), "outputs": tensors(model.signature.outputs)},
        "memory_bytes": model.memory_bytes,
        "runtime": model.runtime,
    }


@bp.get("/metadata")
def metadata():
    rt = runtime()
    body = {
        "service": {"name": "funfleet", "version": __version__, "host": socket.gethostname(), "pid": os.getpid()},
        "runtime": {"python": platform.python_version()},
        "ready": rt.ready,
        "model": _describe(rt.get()) if rt.ready else None,
        "models": [_describe(m) for m in rt.all()],
        "release": rt.release_id,
    }
    if rt.info:
        body["runtime"].update(
            tensorflow=rt.info.tensorflow,
            keras=rt.info.keras,
            device=rt.info.device,
            load_seconds=rt.info.load_seconds,
            warmup_seconds=rt.info.warmup_seconds,
        )
    body["runtime"]["resident_bytes"] = resident_bytes()
    stats_socket = os.environ.get("FUNFLEET_UWSGI_STATS")
    stats = metrics.read_uwsgi_stats(stats_socket) if stats_socket else None
    if stats is not None:
        # Every worker's memory, not only the one answering (which is the one with this pid).
        body["runtime"]["workers"] = metrics.uwsgi_workers(stats)
    if rt.error:
        body["error"] = rt.error
    return jsonify(body)


@bp.get("/metrics")
def prometheus_metrics():
    settings = current_app.extensions["funfleet.settings"]
    payload, content_type = metrics.render(metrics.HostState(settings.drain_file, str(settings.model_dir)))
    return Response(payload, content_type=content_type)
