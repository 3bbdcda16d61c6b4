"""funfleet inference service: a Keras model behind a Flask API, served by uWSGI."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping

from flask import Flask, Response, g, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from . import fastpath, logs, metrics
from .batching import IN_FLIGHT
from .config import Settings
from .errors import register_error_handlers
from .runtime import ModelRuntime

__version__ = "0.1.0"
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
    _register_request_hooks(app, settings)
    from .api import register_blueprints

    register_blueprints(app)
    if settings.fast_predict:
        fastpath.install(app, runtime, settings)

    if settings.model_load == "sync":
        try:
            runtime.load()
        except Exception:
            log.exception("the model could not be loaded; /readyz reports why")
    elif settings.model_load == "background":
        thread = runtime.load_in_background()
        app.extensions["funfleet.loader"] = thread
    return app


def _register_request_hooks(app: Flask, settings: Settings) -> None:
    origins = set(settings.cors_origins)

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()
        if settings.batching:
            IN_FLIGHT.enter()
            g.in_flight = True

    @app.teardown_request
    def _done(_exc: BaseException | None) -> None:
        if g.pop("in_flight", False):
            IN_FLIGHT.exit()

    @app.after_request
    def _finish(response: Response) -> Response:
        _read_to_the_end()
        # The rule, not the path, keeps label cardinality bounded (unknown paths share one label).
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        started = g.get("started")
        seconds = None if started is None else time.perf_counter() - started
        metrics.observe_request(endpoint, request.method, response.status_code, seconds)
        if settings.access_log:
            logs.access(request.method, request.path, endpoint, response.status_code, seconds, rid=logs.request_id())
        origin = request.headers.get("Origin")
        if origin and ("*" in origins or origin in origins):
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
            response.vary.add("Origin")
        return response


def _read_to_the_end() -> None:
    """Read the request body to its end before answering, also when the answer came first (an
    unknown model, a wrong method, a request refused from its header): uWSGI closes the socket
    after the response, and nginx, still writing the unread body into it, answered 502 for a
    request that had its 4xx, a 502 that a balancer counts against the host. At most the body
    limit (max_content_length, the same as nginx's), and nothing when the view read it all."""
    # A client gone, or one that sent more than the limit: then nothing is left to protect. (Werkzeug
    # raises RequestEntityTooLarge from ``request.stream`` itself for a body declared over the limit.)
    with contextlib.suppress(ClientDisconnected, RequestEntityTooLarge, OSError):
        stream = request.stream  # Werkzeug's LimitedStream, or the fast path's copy of the body
        while stream.read(1 << 16):
            pass
