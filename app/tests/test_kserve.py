"""KServe's Open Inference Protocol v2, called by tritonclient.http (a client we did not write)
against a real uWSGI serving two models, and by plain HTTP for the protocol's error shapes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import IRIS_DIR, MODEL_DIR
from inference.preprocess import decode_image
from inference.release import read_release

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [6.4, 3.2, 4.5, 1.5], [6.3, 3.3, 6.0, 2.5]], np.float32)


@pytest.fixture(scope="module")
def client(uwsgi_server):
    with httpclient.InferenceServerClient(uwsgi_server.removeprefix("http://"), network_timeout=30) as triton:
        yield triton


@pytest.fixture(scope="module")
def digits_batch(samples):
    spec = read_release(MODEL_DIR).input
    return np.stack([decode_image(samples[str(i)], spec, 1 << 24) for i in range(10)]).astype(np.float32)


@pytest.fixture(scope="module")
def keras_outputs(digits_batch):
    """What Keras itself answers for the same inputs."""
    import keras

    digits = keras.saving.load_model(MODEL_DIR / "model.keras", compile=False)
    iris = keras.saving.load_model(IRIS_DIR / "model.keras", compile=False)
    return {"digits": digits.predict(digits_batch, verbose=0), "iris": iris.predict(FLOWERS, verbose=0)}


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "funfleet"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_ready_and_metadata_for_two_models(client):
    assert client.is_model_ready("digits")
    assert client.is_model_ready("iris", "1")
    assert client.is_model_ready("iris", "2")
    assert not client.is_model_ready("iris", "3")
    assert not client.is_model_ready("nope")
    assert client.get_model_metadata("digits") == {
        "name": "digits",
        "versions": ["1"],
        "platform": "tensorflow_keras",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 32, 32, 3]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
    }
    iris = client.get_model_metadata("iris")
    assert iris["versions"] == ["1", "2"]
    assert iris["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert iris["outputs"] == [{"name": "species", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get_model_metadata("iris", "1")["versions"] == ["1"]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_digits_matches_keras(client, digits_batch, keras_outputs, binary):
    tensor = httpclient.InferInput("input", list(digits_batch.shape), "FP32")
    tensor.set_data_from_numpy(digits_batch, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer("digits", [tensor], outputs=wanted, request_id="req-7")
    probs = result.as_numpy("output")
    assert probs.shape == (10, 10)
    assert probs.argmax(axis=1).tolist() == list(range(10))
    np.testing.assert_allclose(probs, keras_outputs["digits"], atol=1e-5)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("digits", "1", "req-7")


@pytest.mark.parametrize("version", ["1", "2", ""])
def test_infer_iris_every_version(client, keras_outputs, version):
    tensor = httpclient.InferInput("features", list(FLOWERS.shape), "FP32")
    tensor.set_data_from_numpy(FLOWERS)
    result = client.infer("iris", [tensor], model_version=version)
    assert result.get_response()["model_version"] == (version or "2")
    np.testing.assert_allclose(result.as_numpy("species"), keras_outputs["iris"], atol=1e-5)
    assert result.as_numpy("species").argmax(axis=1).tolist() == [0, 1, 2]


@pytest.mark.parametrize(("label", "version"), [("stable", "1"), ("canary", "2")])
def test_infer_iris_by_version_label(client, keras_outputs, label, version):
    """tritonclient reaches a label as the model name ``<m>/labels/<l>`` (it keeps the slashes)."""
    tensor = httpclient.InferInput("features", list(FLOWERS.shape), "FP32")
    tensor.set_data_from_numpy(FLOWERS)
    assert client.is_model_ready(f"iris/labels/{label}")
    assert client.get_model_metadata(f"iris/labels/{label}")["versions"] == [version]
    result = client.infer(f"iris/labels/{label}", [tensor])
    assert result.get_response()["model_version"] == version
    np.testing.assert_allclose(result.as_numpy("species"), keras_outputs["iris"], atol=1e-5)
    with pytest.raises(InferenceServerException, match="version label beta is not found") as err:
        client.infer("iris/labels/beta", [tensor])
    assert err.value.status() == "404"


def test_a_tf_serving_client_call_by_label(uwsgi_server):
    """As a TF Serving REST client calls: POST /v1/models/<m>/labels/<l>:predict with instances."""
    url = f"{uwsgi_server}/v1/models/iris/labels/canary:predict"
    response = requests.post(url, json={"signature_name": "serving_default", "instances": FLOWERS.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    assert np.array(response.json()["predictions"]).argmax(axis=1).tolist() == [0, 1, 2]
    unknown = requests.post(url.replace("canary", "beta"), json={"instances": FLOWERS.tolist()}, timeout=30)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "Unrecognized servable version label: beta"


def test_classification_extension(client):
    tensor = httpclient.InferInput("features", [1, 4], "FP32")
    tensor.set_data_from_numpy(FLOWERS[2:])
    result = client.infer("iris", [tensor], outputs=[httpclient.InferRequestedOutput("species", class_count=2)])
    top = result.as_numpy("species")
    assert top.shape == (1, 2)
    score, index, label = top[0][0].decode().split(":")
    assert (index, label) == ("2", "virginica")
    assert 0.5 < float(score) <= 1.0


def test_client_errors(client):
    wrong_name = httpclient.InferInput("input", [1, 4], "FP32")
    wrong_name.set_data_from_numpy(FLOWERS[:1])
    with pytest.raises(InferenceServerException, match="unexpected inference input 'input'") as err:
        client.infer("iris", [wrong_name])
    assert err.value.status() == "400"
    wrong_type = httpclient.InferInput("features", [1, 4], "FP64")
    wrong_type.set_data_from_numpy(FLOWERS[:1].astype(np.float64))
    with pytest.raises(InferenceServerException, match="datatype FP64"):
        client.infer("iris", [wrong_type])
    with pytest.raises(InferenceServerException, match="unknown model: 'nope'") as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "404"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}, "needs 4 values"),
        (
            {"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]},
            "model takes [-1, 4]",
        ),
        ({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ["a"] * 4}]}, "numbers"),
        ({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32"}]}, "has no data"),
        ({"inputs": []}, "expected 1 input"),
        ({"nope": 1}, '"inputs" list'),
    ],
)
def test_bad_requests_are_400_in_the_protocols_shape(uwsgi_server, body, fragment):
    response = requests.post(f"{uwsgi_server}/v2/models/iris/infer", json=body, timeout=10)
    assert response.status_code == 400
    assert list(response.json()) == ["error"]
    assert fragment in response.json()["error"]


def test_malformed_json_and_bad_binary_header(uwsgi_server):
    response = requests.post(f"{uwsgi_server}/v2/models/iris/infer", data=b"{", timeout=10)
    assert response.status_code == 400
    header = json.dumps(
        {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    ).encode()
    short = requests.post(
        f"{uwsgi_server}/v2/models/iris/infer",
        data=header + b"\0" * 8,
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=10,
    )
    assert short.status_code == 400
    assert "need 16 bytes" in short.json()["error"]
