"""TF Serving's REST API, so that a client written for TF Serving works unchanged.

GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model status (every version served, or one)
GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   the model's own signature
POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    {"instances": [...]} or {"inputs": ...}

A label (models.json's labels, TF Serving's version_labels) stands for the version it names.
Errors answer as TF Serving does: ``{"error": "<message>"}``, 400 for any input the model cannot
take, 404 for a model or version not served. An unknown label is a 404 too, with TF Serving's
message ("Unrecognized servable version label: <l>"; TF Serving itself answers it with a 400).
"""

from __future__ import annotations

import json
import re

from flask import Blueprint, Response, request
from werkzeug.exceptions import MethodNotAllowed

from ..errors import INPUT_STATUS, ApiError, error_response
from ..preprocess import InputError, PixelBudget, columnar_batch, tensor_batch
from ..runtime import LabelNotFound, ModelNotFound, ServedModel, TensorInfo
from . import infer, ready_runtime

bp = Blueprint("tfserving", __name__)

_PATH = re.compile(
    r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<meta>/metadata)|:(?P<verb>[A-Za-z]+))?$"
)


@bp.errorhandler(InputError)
def _input_error(exc: InputError):
    # TF Serving answers 400 to any input it cannot take; a size limit is a 413 on every protocol.
    return error_response(413 if INPUT_STATUS.get(exc.code) == 413 else 400, exc.code, exc.message)


@bp.route("/v1/models/<path:spec>", methods=["GET", "POST"])
def models(spec: str):
    match = _PATH.match(spec)
    if not match:
        raise ApiError(404, "not_found", f"unknown path /v1/models/{spec}")
    name, version, label, meta, verb = match.group("name", "version", "label", "meta", "verb")
    allowed = ["POST"] if verb else ["GET"]
    if request.method not in allowed:
        raise MethodNotAllowed(valid_methods=allowed)
    if verb is not None and verb != "predict":
        raise ApiError(400, "unsupported_verb", f":{verb} is not served; this model answers :predict")
    rt = ready_runtime()
    try:
        model = rt.get(name, version, label)
    except LabelNotFound as exc:
        raise ApiError(404, "label_not_found", f"Unrecognized servable version label: {label}") from exc
    except ModelNotFound as exc:
        which = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        code = "version_not_found" if version is not None and name in rt.models else "model_not_found"
        raise ApiError(404, code, f"Servable not found for request: {which}") from exc
    if verb == "predict":
        return _predict(model)
    if meta:
        return _json(_metadata(model))
    versions = [model.version] if version is not None or label is not None else list(reversed(rt.versions(name)))
    return _json(
        {
            "model_version_status": [
                {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for v in versions
            ]
        }
    )


def _predict(model: ServedModel) -> Response:
    try:
        body = json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, RecursionError) as exc:
        raise InputError("malformed_json", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise InputError("invalid_request", 'the body must be an object with exactly one of "instances" or "inputs"')
    settings = ready_runtime().settings
    budget = PixelBudget(settings.max_image_pixels, settings.max_request_pixels)
    spec = model.release.input
    names = [o.name for o in model.signature.outputs]
    if "instances" in body:
        outputs = infer(model, tensor_batch(body["instances"], spec, budget, settings.max_request_instances))
        if len(outputs) == 1:
            return _json({"predictions": outputs[0].tolist()})
        rows = [{n: out[i].tolist() for n, out in zip(names, outputs, strict=True)} for i in range(len(outputs[0]))]
        return _json({"predictions": rows})
    outputs = infer(model, columnar_batch(body["inputs"], spec, budget, settings.max_request_instances))
    if len(outputs) == 1:
        return _json({"outputs": outputs[0].tolist()})
    return _json({"outputs": {n: out.tolist() for n, out in zip(names, outputs, strict=True)}})


def _tensor(info: TensorInfo, name: str) -> dict:
    return {
        "dtype": info.tf_dtype,
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in info.shape], "unknown_rank": False},
        "name": name,
    }


def _metadata(model: ServedModel) -> dict:
    signature = model.signature
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": model.version},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {t.name: _tensor(t, t.name) for t in signature.inputs},
                        "outputs": {t.name: _tensor(t, t.name) for t in signature.outputs},
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


def _json(payload: dict) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), mimetype="application/json")
