"""``POST /predict``: one uploaded image in, the top-k labels out."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, jsonify, request

from ..errors import ApiError
from ..preprocess import decode_image
from . import infer, ready_runtime

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict():
    rt = ready_runtime()
    settings = rt.settings
    data = _image_bytes()
    top_k = _top_k(len(rt.release.labels), rt.release.top_k)
    batch = decode_image(data, rt.release.input, settings.max_image_pixels)[None]
    probs = infer(rt, batch)[0]
    order = np.argsort(probs)[::-1][:top_k]
    labels = rt.release.labels
    return jsonify(
        best_prediction=labels[int(order[0])],
        predictions=[{"label": labels[int(i)], "probability": float(probs[i])} for i in order],
        model={"name": rt.release.name, "version": rt.release.version},
    )


def _image_bytes() -> bytes:
    content_type = request.mimetype or ""
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return request.get_data(cache=False)
    if content_type != "multipart/form-data":
        raise ApiError(415, "unsupported_media", "send multipart/form-data with an 'image' field, or a raw image body")
    uploads = request.files.getlist("image")
    if not uploads:
        raise ApiError(400, "missing_field", "multipart field 'image' is required")
    if len(uploads) > 1:
        raise ApiError(400, "too_many_images", "send one 'image' per request; batch through /v1/models/<name>:predict")
    return uploads[0].read()


def _top_k(classes: int, default: int) -> int:
    raw = request.args.get("top_k")
    if raw is None:
        return min(default, classes)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= classes:
        raise ApiError(400, "invalid_top_k", f"top_k must be an integer from 1 to {classes}")
    return value
