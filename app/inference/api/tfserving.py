"""TF Serving's REST API, so that a client written for TF Serving works unchanged.

GET  /v1/models/<name>[/versions/<v>]            model status
GET  /v1/models/<name>[/versions/<v>]/metadata   signature
POST /v1/models/<name>[/versions/<v>]:predict    {"instances": [...]} or {"inputs": ...}
"""

from __future__ import annotations

import json
import re

from flask import Blueprint, Response, request
from werkzeug.exceptions import MethodNotAllowed

from ..errors import ApiError
from ..preprocess import columnar_batch, tensor_batch
from ..release import Release
from ..runtime import ModelRuntime
from . import infer, ready_runtime

bp = Blueprint("tfserving", __name__)

_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?:(?P<meta>/metadata)|:(?P<verb>[A-Za-z]+))?$")


@bp.route("/v1/models/<path:spec>", methods=["GET", "POST"])
def models(spec: str):
    match = _PATH.match(spec)
    if not match:
        raise ApiError(404, "not_found", f"unknown path /v1/models/{spec}")
    name, version, meta, verb = match.group("name", "version", "meta", "verb")
    allowed = ["POST"] if verb else ["GET"]
    if request.method not in allowed:
        raise MethodNotAllowed(valid_methods=allowed)
    if verb is not None and verb != "predict":
        raise ApiError(400, "unsupported_verb", f":{verb} is not served; this model answers :predict")
    rt = ready_runtime()
    release = rt.release
    if name != release.name:
        raise ApiError(404, "model_not_found", f"Servable not found for request: Latest({name})")
    if version is not None and version != release.version:
        raise ApiError(404, "version_not_found", f"Servable not found for request: Specific({name}, {version})")
    if verb == "predict":
        return _predict(rt)
    if meta:
        return _json(_metadata(release))
    return _json(
        {
            "model_version_status": [
                {"version": release.version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }
    )


def _predict(rt: ModelRuntime) -> Response:
    try:
        body = json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ApiError(400, "invalid_request", 'the body must be an object with exactly one of "instances" or "inputs"')
    settings, spec = rt.settings, rt.release.input
    if "instances" in body:
        batch = tensor_batch(body["instances"], spec, settings.max_image_pixels, settings.max_batch)
        return _json({"predictions": infer(rt, batch).tolist()})
    batch = columnar_batch(body["inputs"], spec, settings.max_image_pixels, settings.max_batch)
    return _json({"outputs": infer(rt, batch).tolist()})


def _metadata(release: Release) -> dict:
    shape = [{"size": "-1"}] + [{"size": str(d)} for d in release.input.shape]
    return {
        "model_spec": {"name": release.name, "signature_name": "", "version": release.version},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {"input": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": shape}, "name": "input"}},
                        "outputs": {
                            "output": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": {"dim": [{"size": "-1"}, {"size": str(len(release.labels))}]},
                                "name": "output",
                            }
                        },
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


def _json(payload: dict) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), mimetype="application/json")
