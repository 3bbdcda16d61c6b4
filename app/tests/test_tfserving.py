"""TF Serving's REST API: a client written for TF Serving works unchanged."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from helpers import MODEL_DIR
from inference.preprocess import decode_image
from inference.release import read_release


@pytest.fixture(scope="module")
def tensors(samples):
    spec = read_release(MODEL_DIR).input
    return {label: decode_image(data, spec, 1 << 24).tolist() for label, data in samples.items()}


def argmax(rows):
    return [int(np.argmax(row)) for row in rows]


def test_instances_as_nested_lists(client, tensors):
    body = {"instances": [tensors[str(i)] for i in range(10)]}
    response = client.post("/v1/models/digits:predict", json=body)
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert argmax(predictions) == list(range(10))
    assert all(len(row) == 10 for row in predictions)
    assert all(sum(row) == pytest.approx(1.0, abs=1e-4) for row in predictions)


def test_instances_as_b64_images(client, samples):
    body = {"instances": [{"b64": base64.b64encode(samples[str(i)]).decode()} for i in (3, 1, 4)]}
    response = client.post("/v1/models/digits:predict", json=body)
    assert response.status_code == 200
    assert argmax(response.get_json()["predictions"]) == [3, 1, 4]


def test_named_input_instances(client, samples):
    body = {"instances": [{"input": {"b64": base64.b64encode(samples["7"]).decode()}}]}
    response = client.post("/v1/models/digits:predict", json=body)
    assert response.status_code == 200
    assert argmax(response.get_json()["predictions"]) == [7]


def test_versioned_predict_and_columnar_inputs(client, tensors):
    response = client.post("/v1/models/digits/versions/1:predict", json={"inputs": [tensors["0"], tensors["9"]]})
    assert response.status_code == 200
    assert argmax(response.get_json()["outputs"]) == [0, 9]


def test_model_status(client):
    for path in ("/v1/models/digits", "/v1/models/digits/versions/1"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.get_json() == {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }


def test_signature_metadata(client):
    response = client.get("/v1/models/digits/metadata")
    assert response.status_code == 200
    sig = response.get_json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in sig["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "32", "32", "3"]
    assert [d["size"] for d in sig["outputs"]["output"]["tensor_shape"]["dim"]] == ["-1", "10"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/models/nope:predict", 404, "model_not_found"),
        ("/v1/models/digits/versions/7:predict", 404, "version_not_found"),
        ("/v1/models/digits:classify", 400, "unsupported_verb"),
        ("/v1/models/digits/versions:predict", 404, "not_found"),
    ],
)
def test_unknown_models_and_versions(client, tensors, path, status, code):
    response = client.post(path, json={"instances": [tensors["1"]]})
    assert response.status_code == status
    assert response.get_json()["code"] == code


def test_unknown_model_status_is_404(client):
    assert client.get("/v1/models/nope").status_code == 404
    assert client.get("/v1/models/digits/versions/2").status_code == 404


def test_b64_of_a_non_image_is_400_as_in_tf_serving(client):
    body = {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}
    response = client.post("/v1/models/digits:predict", json=body)
    assert response.status_code == 400
    assert response.get_json()["code"] == "unsupported_media"


def test_grayscale_b64_image_works(client, samples):
    gray = Image.open(io.BytesIO(samples["3"])).convert("L")
    out = io.BytesIO()
    gray.save(out, "PNG")
    body = {"instances": [{"b64": base64.b64encode(out.getvalue()).decode()}]}
    assert argmax(client.post("/v1/models/digits:predict", json=body).get_json()["predictions"]) == [3]
