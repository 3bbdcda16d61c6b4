"""``POST /predict``'s common request, served without Flask's per-request machinery.

Under load (LiteRT digits CNN behind nginx, 2-core VM, c=16) a request cost a uWSGI worker
about 710 µs of CPU through Flask, and 390 µs through a bare WSGI function doing the same
decode, model call and JSON: Flask's request and app contexts, URL matching, hooks, proxies and
response object took the difference. This WSGI middleware sits in front of the Flask app
(``app.wsgi_app``) and serves the request most clients send to an image classifier: an upload
(multipart ``image`` or a raw image body), no ``Origin`` header (CORS stays Flask's), and at
most ``model``, ``version`` (or ``label``) and ``top_k`` as plain query values. It calls what the Flask view
calls (``split_form_data``, ``decode_image``, ``infer``, ``ranked``, and the view's own field,
upload and ``top_k`` rules) and writes the bytes ``jsonify`` writes: decode, model, answer. Its
timing, metrics, access line, request id and in-flight count are the bookkeeping's
(bookkeeping.py), the layer around both paths; it only names the route it served.

Everything else goes to Flask unchanged, and so does any request that fails before its model
runs (unknown model, bad ``top_k``, an image that does not decode, a model not ready): the body
read here is handed over with it, so each check and error keeps one implementation, Flask's. An
error while the model runs (a batch timeout) is answered by Flask's own error handlers and
hooks, in a request context, without running the model again."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from flask import Flask

from .api import infer
from .api.predict import is_raw_image, ranked, top_k_value
from .bookkeeping import SCOPE
from .config import Settings
from .errors import ApiError
from .multipart import files, form_fields, split_form_data
from .preprocess import decode_image
from .runtime import ModelNotFound, ModelRuntime, ServedModel

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PATH = "/predict"
# Query strings whose meaning is plain (no escapes, no repeated or unknown keys); others go to Flask.
_QUERY = re.compile(r"(?:model|version|label|top_k)=[A-Za-z0-9._~-]*")


class Unserved(Exception):
    """This request is Flask's (not the common case, or it fails a check)."""


class FastPredict:
    """WSGI middleware: ``POST /predict`` for image classifiers, Flask for everything else."""

    def __init__(self, app: Flask, wsgi_app: WSGIApplication, runtime: ModelRuntime, settings: Settings) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.runtime = runtime
        self.settings = settings

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if (
            environ.get("PATH_INFO") != PATH
            or environ.get("REQUEST_METHOD") != "POST"
            or "HTTP_ORIGIN" in environ
            or self.app.debug
            or self.app.json.compact is False  # type: ignore[attr-defined]
        ):
            return self.wsgi_app(environ, start_response)
        try:
            model, batch, top_k = self._prepare(environ)
        except Unserved:
            return self.wsgi_app(environ, start_response)
        environ[SCOPE].endpoint = PATH
        try:
            doc = ranked(model, infer(model, batch)[0][0], top_k)
        except Exception as exc:  # answered by Flask's error handlers
            return self._flask_error(environ, start_response, exc)
        body = (self.app.json.dumps(doc, separators=(",", ":")) + "\n").encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _prepare(self, environ: WSGIEnvironment) -> tuple[ServedModel, np.ndarray, int]:
        """The model, the decoded batch of one and top_k; Unserved for anything else."""
        args = _query_args(environ.get("QUERY_STRING", ""))
        if not self.runtime.ready:
            raise Unserved
        name, version, label, image = self._upload(environ, args)
        if version and label:
            raise Unserved  # Flask refuses it
        try:
            model = self.runtime.get(name or None, version or None, label or None)
        except ModelNotFound:
            raise Unserved from None
        release = model.release
        if release.task != "classification" or release.input.kind != "image":
            raise Unserved
        try:
            top_k = top_k_value(args.get("top_k"), len(release.labels), release.top_k)
        except ApiError:
            raise Unserved from None
        try:
            batch = decode_image(image, release.input, self.settings.max_image_pixels)[None]
        except Exception:
            raise Unserved from None  # Flask decodes it again and answers with the error
        return model, batch, top_k

    def _upload(
        self, environ: WSGIEnvironment, args: dict[str, str]
    ) -> tuple[str | None, str | None, str | None, bytes]:
        """The model name, version and version label asked for and the image. Reads the body, and puts it back
        for Flask: from here on, Unserved hands Flask the whole request."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            raise Unserved from None
        if not 0 < length <= self.settings.max_content_length:
            raise Unserved
        content_type = environ.get("CONTENT_TYPE", "")
        mimetype = content_type.partition(";")[0].strip().lower()
        if mimetype != "multipart/form-data" and not is_raw_image(mimetype):
            raise Unserved
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        if len(body) != length:
            raise Unserved
        name, version, label = args.get("model"), args.get("version"), args.get("label")
        if mimetype != "multipart/form-data":
            return name, version, label, body
        parts = split_form_data(content_type, body)
        if parts is None:
            raise Unserved
        uploads = files(parts, "image")
        if len(uploads) != 1:
            raise Unserved
        # As the Flask view: the query's value when the key is there, else the form's first.
        name = next(iter(form_fields(parts, "model")), None) if name is None else name
        version = next(iter(form_fields(parts, "version")), None) if version is None else version
        label = next(iter(form_fields(parts, "label")), None) if label is None else label
        return name, version, label, uploads[0]

    def _flask_error(self, environ: WSGIEnvironment, start_response: StartResponse, exc: Exception) -> Iterable[bytes]:
        """The error's answer as the Flask view's would be: its handler, the after-request hooks,
        the teardown."""
        environ["wsgi.input"].seek(0)
        with self.app.request_context(environ):
            response = self.app.finalize_request(self.app.handle_user_exception(exc))
        return response(environ, start_response)


def _query_args(query: str) -> dict[str, str]:
    """``model``, ``version``, ``label`` and ``top_k`` from a plain query string; Unserved for any other."""
    args: dict[str, str] = {}
    if query:
        for pair in query.split("&"):
            if not _QUERY.fullmatch(pair):
                raise Unserved
            key, _sep, value = pair.partition("=")
            if key in args:
                raise Unserved
            args[key] = value
    return args


def install(app: Flask, runtime: ModelRuntime, settings: Settings) -> None:
    """Put the fast path in front of the app's WSGI callable (inside the bookkeeping, which
    create_app puts around it: the fast path times, counts and logs nothing itself)."""
    app.wsgi_app = FastPredict(app, app.wsgi_app, runtime, settings)  # type: ignore[method-assign]
