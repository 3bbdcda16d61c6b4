"""Every request's bookkeeping, in one WSGI layer in front of the whole app: its timing, its
Prometheus count and duration, its JSON access line, its request id, the worker's in-flight count
and the read of whatever body the answer left unread.

Both ways a request is served pass through here: Flask, and the fast path for ``POST /predict``
(fastpath.py), which sits inside this layer and so only decodes, runs the model and answers. A
new per-request metric, a trace span or another log field belongs here, where no request can
miss it (a Flask signal or hook would miss every request the fast path serves).

What the layer cannot see for itself, the layer that answered tells it through the request's
``RequestScope`` (``environ[SCOPE]``): the matched route, the label the endpoint metric and the
access line carry (Flask's url rule, the fast path's ``/predict``; "unmatched" for a path no route
matched, so no client can grow the label set). The status is read from ``start_response``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask, Response, request
from werkzeug.wsgi import get_path_info

from . import logs, metrics
from .batching import IN_FLIGHT
from .config import Settings

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

LOG = logging.getLogger(__name__)

SCOPE = "funfleet.scope"  # the environ key of the request's RequestScope
UNMATCHED = "unmatched"


class RequestScope:
    """One request as the bookkeeping sees it."""

    __slots__ = ("_start_response", "endpoint", "request_id", "started", "status")

    def __init__(self, environ: WSGIEnvironment, start_response: StartResponse) -> None:
        self.started = time.perf_counter()
        # X-Request-Id: set by the edge nginx (generated, or the client's own when valid) and passed on by every hop.
        self.request_id: str | None = environ.get("HTTP_X_REQUEST_ID") or None
        self.endpoint = UNMATCHED
        self.status: int | None = None
        self._start_response = start_response

    def start_response(self, status: str, headers: list, exc_info: object = None) -> object:
        """The server's start_response, noting the status on the way."""
        self.status = int(status[:3])
        return self._start_response(status, headers, exc_info)  # type: ignore[arg-type]


class Body:
    """``wsgi.input`` as the app reads it: never past the body's end, so that what is left of it
    can be read after the answer (``drain``)."""

    __slots__ = ("_left", "_stream")

    def __init__(self, stream: object, length: int) -> None:
        self._stream = stream
        self._left = length

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self._left:
            size = self._left
        if size == 0:
            return b""
        data = self._stream.read(size)  # type: ignore[attr-defined]
        self._left = self._left - len(data) if data else 0  # nothing more comes: a client gone
        return data

    def readline(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self._left:
            size = self._left
        if size == 0:
            return b""
        data = self._stream.readline(size)  # type: ignore[attr-defined]
        self._left = self._left - len(data) if data else 0
        return data

    def drain(self) -> None:
        """Read the body to its end before answering, also when the answer came first (an
        unknown model, a wrong method, a request refused from its header): uWSGI closes the
        socket after the response, and nginx, still writing the unread body into it, answered 502
        for a request that had its 4xx, a 502 that a balancer counts against the host. Nothing
        when the app read it all."""
        if self._left <= 0:
            return
        with contextlib.suppress(OSError):  # a client gone: nothing left to protect
            while self._left > 0 and self.read(1 << 16):
                pass


def body_length(environ: WSGIEnvironment, limit: int) -> int:
    """How much of the body the app may read, as Werkzeug reads it: the declared length; with
    none, nothing unless the server ends the stream itself (``wsgi.input_terminated``), then at
    most the limit."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length < 0:
        return limit if "wsgi.input_terminated" in environ else 0
    return length


class Bookkeeping:
    """WSGI middleware: times, counts and logs every request the app inside it answers."""

    def __init__(self, app: WSGIApplication, settings: Settings) -> None:
        self.app = app
        self.batching = settings.batching
        self.access_log = settings.access_log
        self.limit = settings.max_content_length

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        scope = RequestScope(environ, start_response)
        environ[SCOPE] = scope
        length = body_length(environ, self.limit)
        body = environ["wsgi.input"] = Body(environ["wsgi.input"], length)
        token = logs.REQUEST_ID.set(scope.request_id)
        if self.batching:
            IN_FLIGHT.enter()  # the micro-batcher waits for batch-mates only while requests are in flight
        try:
            return self.app(environ, scope.start_response)  # type: ignore[arg-type]
        finally:
            try:
                # A body declared over the limit (max_content_length, nginx's too) is refused
                # from its header and left unread: at most the limit is ever read. A client that
                # went away mid-body leaves nothing to drain.
                if length <= self.limit:
                    with contextlib.suppress(OSError):
                        body.drain()
                # The answer is made: a failure to count or log it costs the metric, not the answer.
                try:
                    self.record(environ, scope)
                except Exception:
                    LOG.exception("could not record the request's metrics or access line")
            finally:
                if self.batching:
                    IN_FLIGHT.exit()
                logs.REQUEST_ID.reset(token)

    def record(self, environ: WSGIEnvironment, scope: RequestScope) -> None:
        """The request's metrics and access line. No status: the app raised, the server answers 500."""
        seconds = time.perf_counter() - scope.started
        status = 500 if scope.status is None else scope.status
        method = environ.get("REQUEST_METHOD", "GET").upper()
        metrics.observe_request(scope.endpoint, method, status, seconds)
        if self.access_log:
            path = "/" + get_path_info(environ).lstrip("/")  # as Flask's request.path
            logs.access(method, path, scope.endpoint, status, seconds, rid=scope.request_id)


def install(app: Flask, settings: Settings) -> None:
    """Put the bookkeeping around the app's WSGI callable (the fast path included: install it
    last), and have Flask name the route it matched."""

    @app.after_request
    def _name_the_endpoint(response: Response) -> Response:
        rule = request.url_rule
        found = request.environ.get(SCOPE)
        if rule is not None and found is not None:
            found.endpoint = rule.rule  # the rule, not the path: label values stay a closed set
        return response

    app.wsgi_app = Bookkeeping(app.wsgi_app, settings)  # type: ignore[method-assign]
