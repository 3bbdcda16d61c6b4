"""funfleet inference service: a Keras model behind a Flask API, served by uWSGI."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask, Response, request

from . import bookkeeping, fastpath, logs, metrics
from .config import Settings
from .errors import register_error_handlers
from .runtime import ModelRuntime

# The package's version (app/pyproject.toml reads it from here): /metadata, KServe's server
# metadata and the OpenAPI document report it. A literal, not importlib.metadata: app hosts run
# the code from the release folder, where no distribution is installed.
__version__ = "1.0.0"
log = logging.getLogger(__name__)


def create_app(config: Mapping | None = None) -> Flask:
    """Build the app. With ``model_load="sync"`` (the default) the model is loaded and warmed
    before this returns, so call it only after uWSGI has forked (``lazy-apps``): a worker starts
    accepting only once its model is warm. A model that cannot be loaded does not kill the
    worker (that would crash-loop the service): the app still comes up, answers 503, and
    /readyz reports "failed" with the reason, which the deploy's readiness check stops on."""
    settings = Settings.from_env(config)
    logs.configure()
    metrics.start_worker()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.json.sort_keys = False
    runtime = ModelRuntime(settings)
    app.extensions["funfleet.runtime"] = runtime
    app.extensions["funfleet.settings"] = settings

    register_error_handlers(app)
    _register_cors(app, settings)
    from .api import register_blueprints

    register_blueprints(app)
    if settings.fast_predict:
        fastpath.install(app, runtime, settings)
    bookkeeping.install(app, settings)  # around everything, the fast path included

    if settings.model_load == "sync":
        try:
            runtime.load()
        except Exception:
            log.exception("the model could not be loaded; /readyz reports why")
    elif settings.model_load == "background":
        thread = runtime.load_in_background()
        app.extensions["funfleet.loader"] = thread
    return app


def _register_cors(app: Flask, settings: Settings) -> None:
    origins = set(settings.cors_origins)
    if not origins:
        return

    @app.after_request
    def _allow_origin(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and ("*" in origins or origin in origins):
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
            response.vary.add("Origin")
        return response
