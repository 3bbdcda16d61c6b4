"""KServe's Open Inference Protocol (v2) over REST: what Triton, KServe, Seldon and MLServer
serve and ``tritonclient.http`` calls.

GET  /v2                                             server metadata
GET  /v2/health/live, /v2/health/ready               liveness, readiness (every model loaded)
GET  /v2/models/<m>[/versions/<v>|/labels/<l>]       model metadata: the model's own tensors
GET  /v2/models/<m>[/versions/<v>|/labels/<l>]/ready model readiness
POST /v2/models/<m>[/versions/<v>|/labels/<l>]/infer tensors in, tensors out

``labels/<l>`` (models.json's labels, as TF Serving's) stands for the version the label names;
``tritonclient`` reaches it with the model name ``<m>/labels/<l>``.

Tensors come as JSON (``data``, flat or nested, row-major) or with the binary tensor data
extension (``Inference-Header-Content-Length``: the JSON header, then each input's raw bytes,
little-endian, in input order); outputs are returned as JSON, or as binary when the request asks
(``binary_data_output`` for all, ``binary_data`` per output). The classification extension
(``classification: k`` on an output) returns the top k as ``"<score>:<index>:<label>"`` strings.
Errors are ``{"error": "<message>"}``: 400 for a request the model cannot take, 404 for a model,
version or label not served, 503 while the models load.
"""

from __future__ import annotations

import json
import struct

import numpy as np
from flask import Blueprint, Response, request

from .. import __version__
from ..errors import INPUT_STATUS, ApiError
from ..preprocess import InputError, text_batch
from ..runtime import LabelNotFound, ModelNotFound, ServedModel, TensorInfo
from . import infer, ready_runtime, runtime

bp = Blueprint("kserve", __name__)

HEADER = "Inference-Header-Content-Length"
# v2 datatype -> numpy dtype, for the tensors a request may carry
NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, mimetype="application/json")


@bp.errorhandler(InputError)
def _input_error(exc: InputError):
    return _error(413 if INPUT_STATUS.get(exc.code) == 413 else 400, exc.message)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return _error(exc.status, exc.message)


def _json(payload: dict, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status=status, mimetype="application/json")


@bp.get("/v2")
def server_metadata():
    return _json({"name": "funfleet", "version": __version__, "extensions": ["binary_tensor_data", "classification"]})


@bp.get("/v2/health/live")
def live():
    return _json({"live": True})


@bp.get("/v2/health/ready")
def ready():
    rt = runtime()
    # 503, not a 4xx: a balancer then asks another host, and tritonclient reads any non-200 as false.
    return _json({"ready": rt.ready}, 200 if rt.ready else 503)


def _model(name: str, version: str | None, label: str | None = None) -> ServedModel:
    try:
        return ready_runtime().get(name, version, label)
    except LabelNotFound as exc:
        message = f"Request for unknown model: '{name}' version label {label} is not found"
        raise ApiError(404, "label_not_found", message) from exc
    except ModelNotFound as exc:
        if version is not None and name in runtime().models:
            message = f"Request for unknown model: '{name}' version {version} is not found"
            raise ApiError(404, "version_not_found", message) from exc
        raise ApiError(404, "model_not_found", f"Request for unknown model: '{name}' is not found") from exc


def _tensor_meta(info: TensorInfo) -> dict:
    return {"name": info.name, "datatype": info.datatype, "shape": list(info.shape)}


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
@bp.get("/v2/models/<name>/labels/<label>")
def model_metadata(name: str, version: str | None = None, label: str | None = None):
    model = _model(name, version, label)
    versions = [model.version] if version is not None or label is not None else runtime().versions(name)
    return _json(
        {
            "name": model.name,
            "versions": versions,
            "platform": "tensorflow_keras",
            "inputs": [_tensor_meta(t) for t in model.signature.inputs],
            "outputs": [_tensor_meta(t) for t in model.signature.outputs],
        }
    )


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
@bp.get("/v2/models/<name>/labels/<label>/ready")
def model_ready(name: str, version: str | None = None, label: str | None = None):
    model = _model(name, version, label)
    return _json({"name": model.name, "version": model.version, "ready": True})


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
@bp.post("/v2/models/<name>/labels/<label>/infer")
def model_infer(name: str, version: str | None = None, label: str | None = None):
    model = _model(name, version, label)
    body, binary = _read_request()
    # Every part of the request is checked before the model runs: a malformed one costs no inference.
    wanted = _requested(model, body)
    all_binary = bool(_parameters(body, "the request").get("binary_data_output", False))
    batch = _input_batch(model, body, binary)
    outputs = infer(model, batch)
    return _respond(model, body, outputs, wanted, all_binary)


def _read_request() -> tuple[dict, bytes]:
    raw = request.get_data(cache=False)
    header = request.headers.get(HEADER)
    binary = b""
    if header is not None:
        try:
            size = int(header)
        except ValueError:
            size = -1
        if not 0 <= size <= len(raw):
            raise InputError("invalid_request", f"{HEADER} must be the JSON header's length, at most the body's")
        raw, binary = raw[:size], raw[size:]
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:
        raise InputError("malformed_json", f"failed to parse the request JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InputError("invalid_request", 'the request must be an object with an "inputs" list')
    return body, binary


def _parameters(holder: dict, where: str) -> dict:
    """A ``parameters`` object (of the request, an input or an output): absent, null or an object."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InputError("invalid_request", f'{where}: "parameters" must be an object')
    return params


def _input_batch(model: ServedModel, body: dict, binary: bytes) -> np.ndarray:
    spec = model.signature.inputs[0]
    inputs = body["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError("invalid_request", f"expected 1 input for model '{model.name}', got {len(inputs)}")
    tensor = inputs[0]
    if tensor.get("name") != spec.name:
        given = tensor.get("name")
        message = f"unexpected inference input '{given}' for model '{model.name}'; it takes '{spec.name}'"
        raise InputError("invalid_request", message)
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise InputError(
            "invalid_dtype", f"input '{spec.name}': datatype {datatype} given, the model takes {spec.datatype}"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError("invalid_shape", f"input '{spec.name}': shape must be a list of non-negative integers")
    if datatype == "BYTES":
        return _text_batch(model, spec, tensor, shape, binary)
    if len(shape) != len(spec.shape) or any(s not in (-1, d) for s, d in zip(spec.shape[1:], shape[1:], strict=True)):
        raise InputError(
            "invalid_shape", f"input '{spec.name}': shape {shape} given, the model takes {list(spec.shape)}"
        )
    limit = ready_runtime().settings.max_request_instances
    if not 1 <= shape[0] <= limit:
        raise InputError("batch_too_large", f"a batch holds 1 to {limit} instances, got {shape[0]}")
    count = int(np.prod(shape))
    dtype = np.dtype(NUMPY[datatype]).newbyteorder("<")
    size = _binary_size(tensor, spec.name)
    if size is not None:
        if "data" in tensor:
            raise InputError("invalid_request", f"input '{spec.name}' has both binary data and JSON data")
        if size != len(binary) or size != count * dtype.itemsize:
            raise InputError(
                "invalid_request",
                f"input '{spec.name}': {count} {datatype} values need {count * dtype.itemsize} bytes; "
                f"binary_data_size is {size}, the body holds {len(binary)}",
            )
        arr = np.frombuffer(binary, dtype=dtype)
    else:
        if "data" not in tensor:
            raise InputError("invalid_request", f"input '{spec.name}' has no data")
        try:
            arr = np.asarray(tensor["data"], dtype=np.float64 if datatype.startswith("FP") else None)
        except (ValueError, TypeError) as exc:
            raise InputError("invalid_shape", f"input '{spec.name}': data is ragged or not numbers") from exc
        except OverflowError as exc:  # an integer beyond float64's range, as FP data
            raise InputError("invalid_value", f"input '{spec.name}': a number out of range for {datatype}") from exc
        if arr.dtype.kind not in "biuf":
            raise InputError("invalid_dtype", f"input '{spec.name}': data must be numbers")
        arr = arr.reshape(-1)
        if arr.size != count:
            message = f"input '{spec.name}': shape {shape} needs {count} values, got {arr.size}"
            raise InputError("invalid_shape", message)
    arr = arr.astype(NUMPY[datatype], copy=False).reshape(shape)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError("invalid_value", f"input '{spec.name}': NaN or infinite values")
    return arr


def _binary_size(tensor: dict, name: str) -> int | None:
    size = _parameters(tensor, f"input '{name}'").get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InputError("invalid_request", f"input '{name}': binary_data_size must be a non-negative integer")
    return size


def _text_batch(model: ServedModel, spec: TensorInfo, tensor: dict, shape: list, binary: bytes) -> np.ndarray:
    """A text model's strings: shape [N] (or [N, 1]), as JSON strings or the binary extension's
    length-prefixed elements."""
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InputError("invalid_shape", f"input '{spec.name}': shape {shape} given, the model takes [-1] or [-1, 1]")
    count = shape[0]
    size = _binary_size(tensor, spec.name)
    if size is not None:
        if "data" in tensor or size != len(binary):
            raise InputError(
                "invalid_request", f"input '{spec.name}': binary_data_size is {size}, the body holds {len(binary)}"
            )
        values, offset = [], 0
        while offset < len(binary):
            if offset + 4 > len(binary):
                raise InputError("invalid_request", f"input '{spec.name}': truncated BYTES element")
            (length,) = struct.unpack_from("<I", binary, offset)
            values.append(binary[offset + 4 : offset + 4 + length])
            if len(values[-1]) != length:
                raise InputError("invalid_request", f"input '{spec.name}': truncated BYTES element")
            offset += 4 + length
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InputError("invalid_request", f"input '{spec.name}' has no data")
        values = [v for row in data for v in (row if isinstance(row, list) else [row])]
    if len(values) != count:
        raise InputError(
            "invalid_shape", f"input '{spec.name}': shape {shape} needs {count} strings, got {len(values)}"
        )
    return text_batch(values, model.release.input, ready_runtime().settings.max_request_instances)


def _requested(model: ServedModel, body: dict) -> list[tuple[int, dict]]:
    names = [o.name for o in model.signature.outputs]
    requested = body.get("outputs")
    if requested is None:
        return [(i, {}) for i in range(len(names))]
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise InputError("invalid_request", '"outputs" must be a list of objects')
    chosen = []
    for output in requested:
        if not isinstance(output.get("name"), str) or output["name"] not in names:
            message = f"unexpected inference output '{output.get('name')}' for model '{model.name}'"
            raise InputError("invalid_request", message)
        params = _parameters(output, f"output '{output['name']}'")
        k = params.get("classification", 1)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError("invalid_request", "classification must be a positive integer")
        chosen.append((names.index(output["name"]), params))
    return chosen


def _classes(model: ServedModel, values: np.ndarray, k: object) -> np.ndarray:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError("invalid_request", "classification must be a positive integer")
    labels = model.release.labels
    flat = values.reshape(len(values), -1)
    k = min(k, flat.shape[1])
    rows = []
    for row in flat:
        order = np.argsort(row)[::-1][:k]
        rows.append([f"{row[i]:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "") for i in order])
    return np.array(rows, dtype=object)


def _respond(
    model: ServedModel, body: dict, outputs: list[np.ndarray], wanted: list[tuple[int, dict]], all_binary: bool
) -> Response:
    entries, chunks = [], []
    for index, params in wanted:
        info = model.signature.outputs[index]
        values = outputs[index]
        datatype = info.datatype
        if "classification" in params:
            values, datatype = _classes(model, values, params["classification"]), "BYTES"
        entry: dict = {"name": info.name, "datatype": datatype, "shape": list(values.shape)}
        if params.get("binary_data", all_binary):
            raw = _bytes_payload(values) if datatype == "BYTES" else _little_endian(values)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = values.reshape(-1).tolist()
        entries.append(entry)
    payload = {"model_name": model.name, "model_version": model.version, "outputs": entries}
    if "id" in body:
        payload["id"] = body["id"]
    header = json.dumps(payload, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, mimetype="application/json")
    response = Response(header + b"".join(chunks), mimetype="application/octet-stream")
    response.headers[HEADER] = str(len(header))
    return response


def _little_endian(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()


def _bytes_payload(values: np.ndarray) -> bytes:
    """BYTES elements as the binary extension sends them: a 4-byte little-endian length, then the bytes."""
    out = []
    for item in values.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        out.append(struct.pack("<I", len(data)) + data)
    return b"".join(out)
