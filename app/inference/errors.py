"""JSON errors. The body keeps TF Serving's shape (``{"error": "<message>"}``) so its clients
can read it, plus a machine-readable ``code``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from .batching import BatchTimeout
from .preprocess import InputError

log = logging.getLogger(__name__)

# The HTTP status of each kind of bad input (preprocess.InputError.code); any other is 422.
INPUT_STATUS = {
    "empty_image": 415,
    "unsupported_media": 415,
    "corrupt_image": 415,
    "image_too_large": 413,
    "request_too_large": 413,
    "text_too_long": 413,
    "invalid_request": 400,
    "invalid_base64": 400,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str):
    response = jsonify(error=message, code=code, status=status)
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(InputError)
    def _input_error(exc: InputError):
        return error_response(INPUT_STATUS.get(exc.code, 422), exc.code, exc.message)

    @app.errorhandler(BatchTimeout)
    def _batch_timeout(exc: BatchTimeout):
        response = error_response(503, "inference_timeout", str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        if exc.code == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
