"""Several models and versions on one host: the default model, picking by name and version, a
tabular model's features, real signatures, per-model memory, TF Serving's status of every
version, all against the real demo models (outputs compared with Keras's own)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from helpers import IRIS_DIR, counter

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FLOWERS = {
    "setosa": [5.1, 3.5, 1.4, 0.2],
    "versicolor": [6.4, 3.2, 4.5, 1.5],
    "virginica": [6.3, 3.3, 6.0, 2.5],
}
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


@pytest.fixture(scope="module")
def keras_iris():
    """The framework's own answer for the iris rows, from the release's model file."""
    import keras

    model = keras.saving.load_model(IRIS_DIR / "model.keras", compile=False)
    return model.predict(np.array(list(FLOWERS.values()), np.float32), verbose=0)


def test_readyz_lists_every_model_default_first(multi_client):
    body = multi_client.get("/readyz").get_json()
    assert body["status"] == "ready"
    assert (body["model"], body["version"]) == ("digits", "1")
    assert body["models"] == [
        {"name": "digits", "versions": ["1"], "input": "image", "task": "classification"},
        {"name": "iris", "versions": ["1", "2"], "input": "tensor", "task": "classification", "features": FEATURES},
    ]


def test_predict_defaults_to_the_first_model(multi_client, samples):
    response = multi_client.post("/predict", data=samples["4"], content_type="image/png")
    assert response.status_code == 200
    assert response.get_json()["best_prediction"] == "4"
    assert response.get_json()["model"] == {"name": "digits", "version": "1"}


@pytest.mark.parametrize("version", [None, "1", "2"])
def test_predict_a_tabular_model_by_feature_name(multi_client, keras_iris, version):
    query = "?model=iris" + (f"&version={version}" if version else "")
    for row, (species, values) in enumerate(FLOWERS.items()):
        response = multi_client.post("/predict" + query, json=dict(zip(FEATURES, values, strict=True)))
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["best_prediction"] == species
        assert body["model"] == {"name": "iris", "version": version or "2"}
        by_label = {p["label"]: p["probability"] for p in body["predictions"]}
        assert by_label["setosa"] == pytest.approx(float(keras_iris[row][0]), abs=1e-5)


def test_predict_a_tabular_model_by_position_and_its_errors(multi_client):
    assert (
        multi_client.post("/predict?model=iris", json=FLOWERS["virginica"]).get_json()["best_prediction"] == "virginica"
    )
    missing = multi_client.post("/predict?model=iris", json={"sepal_length_cm": 1.0})
    assert (missing.status_code, missing.get_json()["code"]) == (422, "invalid_features")
    image = multi_client.post("/predict?model=iris", data=b"\x89PNG", content_type="image/png")
    assert (image.status_code, image.get_json()["code"]) == (415, "unsupported_media")
    unknown = multi_client.post("/predict?model=nope", json=FLOWERS["setosa"])
    assert (unknown.status_code, unknown.get_json()["code"]) == (404, "model_not_found")
    version = multi_client.post("/predict?model=iris&version=9", json=FLOWERS["setosa"])
    assert (version.status_code, version.get_json()["code"]) == (404, "version_not_found")


def test_multipart_field_picks_the_model(multi_client, samples):
    import io

    response = multi_client.post("/predict", data={"model": "digits", "image": (io.BytesIO(samples["2"]), "2.png")})
    assert response.get_json()["best_prediction"] == "2"


def test_tf_serving_status_lists_every_version_newest_first(multi_client):
    ok = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    body = multi_client.get("/v1/models/iris").get_json()
    assert body == {"model_version_status": [{"version": "2", **ok}, {"version": "1", **ok}]}
    assert multi_client.get("/v1/models/iris/versions/1").get_json() == {
        "model_version_status": [{"version": "1", **ok}]
    }
    assert multi_client.get("/v1/models/iris/versions/3").status_code == 404


def test_tf_serving_metadata_has_the_models_own_names(multi_client):
    sig = multi_client.get("/v1/models/iris/versions/1/metadata").get_json()["metadata"]["signature_def"]
    serving = sig["signature_def"]["serving_default"]
    assert list(serving["inputs"]) == ["features"]
    assert list(serving["outputs"]) == ["species"]
    assert serving["inputs"]["features"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in serving["inputs"]["features"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert [d["size"] for d in serving["outputs"]["species"]["tensor_shape"]["dim"]] == ["-1", "3"]
    digits = multi_client.get("/v1/models/digits/metadata").get_json()["metadata"]["signature_def"]["signature_def"]
    assert list(digits["serving_default"]["inputs"]) == ["input"]
    assert list(digits["serving_default"]["outputs"]) == ["output"]


def test_tf_serving_predict_on_each_version(multi_client, keras_iris):
    rows = [dict(zip(FEATURES, v, strict=True)) for v in FLOWERS.values()]
    for path in ("/v1/models/iris:predict", "/v1/models/iris/versions/1:predict"):
        predictions = np.array(multi_client.post(path, json={"instances": rows}).get_json()["predictions"])
        np.testing.assert_allclose(predictions, keras_iris, atol=1e-5)
    columns = {f: [v[i] for v in FLOWERS.values()] for i, f in enumerate(FEATURES)}
    outputs = np.array(multi_client.post("/v1/models/iris:predict", json={"inputs": columns}).get_json()["outputs"])
    np.testing.assert_allclose(outputs, keras_iris, atol=1e-5)
    bad = multi_client.post("/v1/models/iris:predict", json={"instances": [[1.0, 2.0]]})
    assert bad.status_code == 400
    assert set(bad.get_json()) >= {"error"}


def test_metadata_and_metrics_report_memory_per_model(multi_client):
    body = multi_client.get("/metadata").get_json()
    models = {(m["name"], m["version"]): m for m in body["models"]}
    assert set(models) == {("digits", "1"), ("iris", "1"), ("iris", "2")}
    assert all(m["memory_bytes"] >= 0 for m in models.values())
    assert models[("iris", "1")]["signature"] == {
        "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "species", "dtype": "float32", "shape": [-1, 3]}],
    }
    assert models[("iris", "2")]["input"]["features"] == FEATURES
    assert body["runtime"]["resident_bytes"] > 50 * 1024 * 1024
    text = multi_client.get("/metrics").get_data(as_text=True)
    assert counter(text, "funfleet_model_ready", model="iris", version="2") == 1
    assert 'funfleet_model_memory_bytes{model="iris",version="1"}' in text


def test_a_missing_declared_version_fails_readiness(tmp_path):
    import shutil

    from inference import create_app

    shutil.copytree(IRIS_DIR, tmp_path / "iris" / "1")
    (tmp_path / "models.json").write_text(json.dumps({"models": [{"name": "iris", "versions": ["1", "2"]}]}))
    app = create_app({"model_dir": str(tmp_path)})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "failed"
    assert response.get_json()["error"].startswith("iris:2: ")
