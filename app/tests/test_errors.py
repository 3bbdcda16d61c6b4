"""Every bad input gets its JSON error and status, and the worker keeps serving."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from helpers import encode


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    if code is not None:
        assert body["code"] == code
    return body


def test_missing_field_is_400(client):
    assert_error(client.post("/predict", data={"other": (io.BytesIO(b"x"), "x.png")}), 400, "missing_field")


def test_two_images_is_400(client, samples):
    data = {"image": [(io.BytesIO(samples["1"]), "a.png"), (io.BytesIO(samples["2"]), "b.png")]}
    assert_error(client.post("/predict", data=data), 400, "too_many_images")


def test_json_to_predict_is_415(client):
    assert_error(client.post("/predict", json={"image": "x"}), 415, "unsupported_media")


@pytest.mark.parametrize("body", [b"{bad", b"[1,2", b"\xff\xfe", b"[" * 100000 + b"]" * 100000])
def test_malformed_json_is_400(client, body):
    response = client.post("/v1/models/digits:predict", data=body, content_type="application/json")
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize("body", [{}, {"instances": []}, {"instances": 3}, [1, 2], {"instances": [1], "inputs": [1]}])
def test_bad_request_shape_is_400(client, body):
    assert_error(client.post("/v1/models/digits:predict", json=body), 400)


def test_oversized_body_is_413(client):
    big = b"\0" * (2 * 1024 * 1024 + 1)
    assert_error(client.post("/predict", data={"image": (io.BytesIO(big), "big.png")}), 413)
    assert_error(client.post("/v1/models/digits:predict", data=big, content_type="application/json"), 413)


def test_decompression_bomb_is_413(client):
    # 20000x20000 of one colour compresses to a few hundred KB but would decode to 1.2 GB.
    bomb = encode(Image.new("L", (20000, 20000), 255), "PNG", optimize=True)
    assert len(bomb) < 2 * 1024 * 1024
    assert_error(client.post("/predict", data={"image": (io.BytesIO(bomb), "bomb.png")}), 413, "image_too_large")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"hello, not an image", "unsupported_media"),
        (b"", "empty_image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "unsupported_media"),
    ],
)
def test_not_an_image_is_415(client, payload, code):
    assert_error(client.post("/predict", data={"image": (io.BytesIO(payload), "x.png")}), 415, code)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_truncated_image_is_415(client, samples, fmt):
    img = Image.open(io.BytesIO(samples["5"])).convert("RGB").resize((256, 256))
    data = encode(img.convert("P") if fmt == "GIF" else img, fmt)
    assert_error(client.post("/predict", data={"image": (io.BytesIO(data[: len(data) // 2]), "x")}), 415)


def test_corrupted_image_body_is_415(client, samples):
    data = bytearray(encode(Image.open(io.BytesIO(samples["5"])).convert("RGB"), "PNG"))
    data[60:200] = b"\x00" * 140  # keep the signature, wreck the IDAT stream
    assert_error(client.post("/predict", data={"image": (io.BytesIO(bytes(data)), "x.png")}), 415)


@pytest.mark.parametrize(
    ("instance", "code"),
    [
        ([[1.0, 2.0]], "invalid_shape"),
        ([[[0.0] * 3] * 32] * 31, "invalid_shape"),
        ([[[0.0] * 1] * 32] * 32, "invalid_shape"),
        ([[["a"] * 3] * 32] * 32, "invalid_dtype"),
        ("a string", "invalid_dtype"),
        (None, "invalid_dtype"),
        ([[[0.0, 0.0, [1]]] * 32] * 32, "invalid_shape"),
        ({"b64": 3}, "invalid_instance"),
        ({"b64": "x", "extra": 1}, "invalid_instance"),
    ],
)
def test_wrong_tensor_is_400_as_in_tf_serving(client, instance, code):
    assert_error(client.post("/v1/models/digits:predict", json={"instances": [instance]}), 400, code)


def test_nan_is_400(client):
    row = [[[0.0] * 3] * 32] * 32
    row = json.loads(json.dumps(row).replace("0.0", "NaN", 1))
    body = json.dumps({"instances": [row]})
    response = client.post("/v1/models/digits:predict", data=body, content_type="application/json")
    assert_error(response, 400, "invalid_value")


def test_batch_limit_is_400(client, app):
    limit = app.extensions["funfleet.settings"].max_request_instances
    b64 = base64.b64encode(encode(Image.new("RGB", (1, 1)), "PNG")).decode()
    body = {"instances": [{"b64": b64}] * (limit + 1)}
    assert_error(client.post("/v1/models/digits:predict", json=body), 400, "batch_too_large")


def test_unknown_path_is_404(client):
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/v1/models/digits/labels/x/y/z"), 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("get", "/predict", "POST"),
        ("put", "/predict", "POST"),
        ("delete", "/healthz", "GET"),
        ("get", "/v1/models/digits:predict", "POST"),
        ("post", "/v1/models/digits", "GET"),
    ],
)
def test_wrong_method_is_405(client, method, path, allow):
    response = getattr(client, method)(path)
    assert_error(response, 405)
    assert allow in response.headers["Allow"]


def test_worker_still_serves_after_every_error(client, samples):
    response = client.post("/predict", data={"image": (io.BytesIO(samples["0"]), "0.png")})
    assert response.status_code == 200
    assert response.get_json()["best_prediction"] == "0"
