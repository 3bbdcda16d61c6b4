"""Several models and versions on one host: the default model, picking by name and version, a
tabular model's features, real signatures, per-model memory, TF Serving's status of every
version, all against the real demo models (outputs compared with Keras's own)."""

from __future__ import annotations

import json
import os
import re

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
        {"name": "digits", "versions": ["1"], "input": "image", "task": "classification", "labels": {"stable": "1"}},
        {
            "name": "iris",
            "versions": ["1", "2"],
            "input": "tensor",
            "task": "classification",
            "labels": {"canary": "2", "stable": "1"},
            "features": FEATURES,
        },
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


# Version labels (models.json's labels, TF Serving's version_labels): iris stable is 1, canary 2.
@pytest.mark.parametrize(("label", "version"), [("stable", "1"), ("canary", "2")])
def test_a_label_picks_its_version_in_every_protocol(multi_client, keras_iris, label, version):
    row = dict(zip(FEATURES, FLOWERS["virginica"], strict=True))
    by_query = multi_client.post(f"/predict?model=iris&label={label}", json=row)
    assert by_query.status_code == 200, by_query.get_data(as_text=True)
    assert by_query.get_json()["model"] == {"name": "iris", "version": version}
    tf = multi_client.post(f"/v1/models/iris/labels/{label}:predict", json={"instances": [row]})
    assert tf.status_code == 200, tf.get_data(as_text=True)
    np.testing.assert_allclose(np.array(tf.get_json()["predictions"]), keras_iris[2:3], atol=1e-5)
    status = multi_client.get(f"/v1/models/iris/labels/{label}").get_json()["model_version_status"]
    assert [s["version"] for s in status] == [version]
    assert multi_client.get(f"/v1/models/iris/labels/{label}/metadata").status_code == 200
    assert multi_client.get(f"/v2/models/iris/labels/{label}").get_json()["versions"] == [version]
    assert multi_client.get(f"/v2/models/iris/labels/{label}/ready").get_json()["version"] == version
    body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": FLOWERS["virginica"]}]}
    v2 = multi_client.post(f"/v2/models/iris/labels/{label}/infer", json=body)
    assert v2.status_code == 200, v2.get_data(as_text=True)
    assert v2.get_json()["model_version"] == version


def test_an_unknown_label_is_a_404_in_every_protocol(multi_client):
    row = FLOWERS["setosa"]
    answers = {
        "/predict": multi_client.post("/predict?model=iris&label=beta", json=row),
        "/v1 status": multi_client.get("/v1/models/iris/labels/beta"),
        "/v1 predict": multi_client.post("/v1/models/iris/labels/beta:predict", json={"instances": [row]}),
        "/v2 ready": multi_client.get("/v2/models/iris/labels/beta/ready"),
        "/v2 infer": multi_client.post(
            "/v2/models/iris/labels/beta/infer",
            json={"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": row}]},
        ),
        # a label another model has
        "/v1 another model's label": multi_client.get("/v1/models/digits/labels/canary"),
    }
    for where, response in answers.items():
        assert response.status_code == 404, where
        assert "label" in response.get_json()["error"], (where, response.get_json())
    assert answers["/v1 predict"].get_json()["error"] == "Unrecognized servable version label: beta"
    assert answers["/predict"].get_json()["code"] == "label_not_found"
    # An unknown model stays a model_not_found, whatever the label.
    assert multi_client.get("/v1/models/nope/labels/stable").status_code == 404
    both = multi_client.post("/predict?model=iris&version=1&label=stable", json=row)
    assert (both.status_code, both.get_json()["code"]) == (400, "invalid_request")


@pytest.mark.parametrize(
    ("labels", "error"),
    [
        ({"stable": "3"}, "label 'stable' of iris names version 3, which is not served"),
        ({"1": "1"}, "label '1' of iris: a letter, then letters, digits"),
        ({"stable\n": "1"}, "label 'stable\\n' of iris: a letter"),
        (["stable"], "labels of iris must be an object"),
    ],
)
def test_a_label_on_a_version_not_served_fails_readiness(tmp_path, labels, error):
    import shutil

    from inference import create_app

    shutil.copytree(IRIS_DIR, tmp_path / "iris" / "1")
    manifest = {"models": [{"name": "iris", "versions": ["1"], "labels": labels}]}
    (tmp_path / "models.json").write_text(json.dumps(manifest))
    response = create_app({"model_dir": str(tmp_path)}).test_client().get("/readyz")
    assert response.status_code == 503
    assert error in response.get_json()["error"]


def classes(client, model: str, version: str) -> dict[str, float]:
    """funfleet_prediction_classes_total by class, for one model version."""
    text = client.get("/metrics").get_data(as_text=True)
    found = {}
    wanted = ("funfleet_prediction_classes_total{", f'model="{model}"', f'version="{version}"')
    for line in text.splitlines():
        if line.startswith(wanted[0]) and wanted[1] in line and wanted[2] in line:
            found[re.search(r'class="([^"]*)"', line)[1]] = float(line.rsplit(" ", 1)[1])
    return found


def test_each_instances_top_class_is_counted_per_model_version(multi_client, samples):
    """What a canary's answers are compared on: the top-1 class of every instance, whatever the
    protocol, by model and version."""
    digits_before, iris_before = classes(multi_client, "digits", "1"), classes(multi_client, "iris", "1")
    assert multi_client.post("/predict", data=samples["7"], content_type="image/png").status_code == 200  # fast path
    rows = [dict(zip(FEATURES, v, strict=True)) for v in FLOWERS.values()]
    assert multi_client.post("/v1/models/iris/versions/1:predict", json={"instances": rows}).status_code == 200
    digits, iris = classes(multi_client, "digits", "1"), classes(multi_client, "iris", "1")
    assert digits.get("7", 0) - digits_before.get("7", 0) == 1
    assert sum(digits.values()) - sum(digits_before.values()) == 1
    assert {k: iris.get(k, 0) - iris_before.get(k, 0) for k in FLOWERS} == dict.fromkeys(FLOWERS, 1)


def test_class_series_stay_bounded_for_models_with_many_classes():
    from inference import metrics

    labels = tuple(f"c{i}" for i in range(1000))
    assert metrics._class_label(labels, 3) == "c3"
    assert metrics._class_label(labels, metrics.CLASS_SERIES) == metrics.OTHER_CLASS
    assert metrics._class_label(labels, 999) == metrics.OTHER_CLASS
    assert metrics._class_label(("a", "b"), 5) == metrics.OTHER_CLASS  # an output wider than labels.json


@pytest.mark.parametrize(
    ("bounds", "error"),
    [
        ([2, 1], "output_buckets of iris: at most 63, strictly ascending"),
        (["1"], "output_buckets of iris must be a list of finite numbers"),
        (list(range(64)), "output_buckets of iris: at most 63"),
    ],
)
def test_malformed_output_buckets_fail_readiness(tmp_path, bounds, error):
    import shutil

    from inference import create_app

    shutil.copytree(IRIS_DIR, tmp_path / "iris" / "1")
    manifest = {"models": [{"name": "iris", "versions": ["1"], "output_buckets": bounds}]}
    (tmp_path / "models.json").write_text(json.dumps(manifest))
    response = create_app({"model_dir": str(tmp_path)}).test_client().get("/readyz")
    assert response.status_code == 503
    assert error in response.get_json()["error"]
