"""``POST /predict``: one instance in (an uploaded image, a tabular model's features as JSON, or
a text model's ``{"text": "..."}``), and out, by the release's task:

- classification: the top-k labels;
- segmentation: the per-pixel class map, as JSON or, with ``?format=png`` (or ``Accept:
  image/png``), as a PNG whose pixel values are the class indices;
- tagging: each token with its tag (a text model's per-token outputs);
- regression (no labels): every output, named as the model names it.

``?model=<name>`` (or a multipart field ``model``) picks the model, ``?version=<v>`` its version
or ``?label=<l>`` the version its label names (models.json's labels: ``stable``, ``canary``); the
defaults are the first declared model and its latest version."""

from __future__ import annotations

import io
import json

import numpy as np
from flask import Blueprint, Response, g, jsonify, request
from PIL import Image

from ..errors import ApiError
from ..multipart import Parts, files, form_fields, split_form_data
from ..preprocess import decode_image, feature_row, text_value
from ..release import TextSpec
from ..runtime import ServedModel
from . import find_model, infer

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict():
    model = find_model(_field("model"), _field("version"), _field("label"))
    release = model.release
    task = release.task
    top_k = _top_k(len(release.labels), release.top_k) if task == "classification" else 0
    text = ""
    if release.input.kind == "image":
        batch = decode_image(_image_bytes(), release.input, model_settings().max_image_pixels)[None]
    elif release.input.kind == "text":
        text = _text(release.input)
        batch = np.array([text], dtype=object)
    else:
        batch = feature_row(_json_body(), release.input)[None]
    outputs = infer(model, batch)
    if task == "segmentation":
        return segmentation(model, outputs[0][0])
    if task == "tagging":
        return jsonify(**tagged(model, text, outputs[0][0]))
    if task == "classification":
        return jsonify(**ranked(model, outputs[0][0], top_k))
    names = [o.name for o in model.signature.outputs]
    return jsonify(
        outputs={n: out[0].tolist() for n, out in zip(names, outputs, strict=True)},
        model={"name": model.name, "version": model.version},
    )


def tagged(model: ServedModel, text: str, scores: np.ndarray) -> dict:
    """``scores``: [sequence_length, tags] for one text; each token's best tag, by position."""
    tokens = model.release.input.tokens(text)
    labels = model.release.labels
    best = scores.argmax(axis=-1)
    rows = [
        {"token": token, "tag": labels[int(best[i])], "probability": float(scores[i, best[i]])}
        for i, token in enumerate(tokens[: len(best)])
    ]
    return {"tokens": rows, "model": {"name": model.name, "version": model.version}}


def ranked(model: ServedModel, probs: np.ndarray, top_k: int) -> dict:
    order = np.argsort(probs)[::-1][:top_k]
    labels = model.release.labels
    return {
        "best_prediction": labels[int(order[0])],
        "predictions": [{"label": labels[int(i)], "probability": float(probs[i])} for i in order],
        "model": {"name": model.name, "version": model.version},
    }


# A colour per class for the PNG mask's palette (the pixel values stay the class indices).
_PALETTE = [0, 0, 0] + [c for i in range(255) for c in ((i * 67) % 256, (i * 151 + 80) % 256, (i * 199 + 40) % 256)]


def segmentation(model: ServedModel, scores: np.ndarray) -> Response:
    """``scores``: [height, width, classes] for one image; the answer is each pixel's class."""
    mask = scores.reshape(scores.shape[0], scores.shape[1], -1).argmax(axis=-1).astype(np.uint8)
    wants_png = request.args.get("format") == "png" or (
        request.args.get("format") is None and request.accept_mimetypes.best == "image/png"
    )
    if wants_png:
        image = Image.fromarray(mask, "P")
        image.putpalette(_PALETTE)
        out = io.BytesIO()
        image.save(out, "PNG")
        response = Response(out.getvalue(), mimetype="image/png")
        response.headers["X-Model"] = f"{model.name}:{model.version}"
        return response
    labels = model.release.labels
    ids, counts = np.unique(mask, return_counts=True)
    return jsonify(
        mask=mask.tolist(),
        labels=list(labels),
        pixels={
            labels[int(i)] if int(i) < len(labels) else str(int(i)): int(n) for i, n in zip(ids, counts, strict=True)
        },
        model={"name": model.name, "version": model.version},
    )


def model_settings():
    from . import runtime

    return runtime().settings


def _parts() -> Parts | None:
    """The upload's form-data parts by the fast path, once a request; None: Werkzeug parses it."""
    if "funfleet_parts" not in g:
        g.funfleet_parts = split_form_data(request.headers.get("Content-Type", ""), request.get_data(cache=True))
    return g.funfleet_parts


def _field(name: str) -> str | None:
    value = request.args.get(name)
    if value is None and request.mimetype == "multipart/form-data":
        parts = _parts()
        value = request.form.get(name) if parts is None else next(iter(form_fields(parts, name)), None)
    return value or None


def _json_body() -> object:
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media", "this model takes its features as application/json")
    try:
        return json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc


def _text(spec: TextSpec) -> str:
    """A text model's input: ``{"text": "..."}`` as JSON, or the body itself as text/plain."""
    if request.mimetype == "text/plain":
        raw: object = request.get_data(cache=False)
    else:
        if request.mimetype != "application/json":
            raise ApiError(415, "unsupported_media", 'send {"text": "..."} as application/json, or text/plain')
        body = _json_body()
        if not isinstance(body, dict) or set(body) != {"text"}:
            raise ApiError(400, "invalid_request", 'the body must be {"text": "..."}')
        raw = body["text"]
    return text_value(raw, spec, "text")


def _image_bytes() -> bytes:
    content_type = request.mimetype or ""
    if is_raw_image(content_type):
        return request.get_data(cache=False)
    if content_type != "multipart/form-data":
        raise ApiError(415, "unsupported_media", "send multipart/form-data with an 'image' field, or a raw image body")
    parts = _parts()
    uploads = [upload.read() for upload in request.files.getlist("image")] if parts is None else files(parts, "image")
    if not uploads:
        raise ApiError(400, "missing_field", "multipart field 'image' is required")
    if len(uploads) > 1:
        raise ApiError(400, "too_many_images", "send one 'image' per request; batch through /v1/models/<name>:predict")
    return uploads[0]


def is_raw_image(mimetype: str) -> bool:
    """Whether a body of this type is the image itself (not a form)."""
    return mimetype.startswith("image/") or mimetype == "application/octet-stream"


def _top_k(classes: int, default: int) -> int:
    return top_k_value(request.args.get("top_k"), classes, default)


def top_k_value(raw: str | None, classes: int, default: int) -> int:
    """The ``top_k`` query value asked for (``raw``), or the release's default; 400 otherwise."""
    if raw is None:
        return min(default, classes)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= classes:
        raise ApiError(400, "invalid_top_k", f"top_k must be an integer from 1 to {classes}")
    return value
