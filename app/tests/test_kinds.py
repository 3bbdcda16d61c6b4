"""Every model kind beside the image classifiers, each with its real demo model, through
/predict and both tensor protocols, compared with the framework's own output for the same input:

- text: the Keras tagger (TextVectorization inside the model), per-token tags;
- tabular with scikit-learn: the wine pipeline saved with joblib;
- regression with two named outputs: the Keras diabetes model;
- ONNX (a PyTorch-style export, NCHW): the digits MLP under ONNX Runtime, with its reference gate.

Scores are compared within 1e-5 (the same framework on the same CPU; a batch of one and a batch
of several may round differently), labels and tags exactly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import DIABETES_BUCKETS, ROOT, SAMPLES, counter, kinds_dir
from inference.preprocess import decode_image
from inference.release import file_sha256, read_release

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
MODELS = ROOT / "files" / "models"
SENTENCES = [
    "Alice flew to Paris on may 12",
    "the Acme office in Oslo has 40 staff",
    "yesterday Quinn called Zorblax from Lagos",
]
WINE = [13.2, 1.78, 2.14, 11.2, 100.0, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050.0]
DIABETES = [59.0, 2.0, 32.1, 101.0, 157.0, 93.2, 38.0, 4.0, 4.8598, 87.0]


@pytest.fixture(scope="module")
def kclient(kinds):
    from inference import create_app

    app = create_app({"model_dir": str(kinds)})
    assert app.extensions["funfleet.runtime"].ready, app.extensions["funfleet.runtime"].error
    return app.test_client()


def features(name: str) -> list[str]:
    return list(read_release(MODELS / name / "1").input.features)


@pytest.fixture(scope="module")
def keras_models():
    import keras

    return {n: keras.saving.load_model(MODELS / n / "1" / "model.keras", compile=False) for n in ("tagger", "diabetes")}


def build_script(name: str):
    """A demo model's build script beside it (files/models/<name>.py) as a module: its held-out
    split is what the release is measured on. Its folder is importable, as when it runs."""
    import importlib

    if str(MODELS) not in sys.path:
        sys.path.append(str(MODELS))
    return importlib.import_module(name)


def heldout_tagger(served, seed: int) -> tuple[float, int]:
    script = build_script("train_tagger")
    _, rows = script.dataset(seed, count=script.TRAIN_SIZE, heldout=script.HELDOUT_SIZE)
    scores = served.predict(np.array([text for text, _ in rows], dtype=object))[0]
    return script.scores(scores, rows)[0], len(rows)


def heldout_wine(served, seed: int) -> tuple[float, int]:
    _, x_test, _, y_test = build_script("train_wine").split(seed)
    probabilities = served.predict(x_test.astype(np.float32))[0]
    return float((probabilities.argmax(axis=1) == y_test).mean()), len(y_test)


def heldout_diabetes(served, seed: int) -> tuple[float, int]:
    script = build_script("train_diabetes")
    _, x_test, _, y_test = script.split(seed)
    progression = served.predict(x_test.astype(np.float32))[0]
    return script.r2(progression[:, 0], y_test), len(y_test)


def heldout_digits_onnx(served, seed: int) -> tuple[float, int]:
    _, _, x_test, y_test = build_script("build_digits_onnx").arrays(seed)
    probabilities = served.predict(x_test.astype(np.float32))[0]
    return float((probabilities.argmax(axis=1) == y_test).mean()), len(y_test)


@pytest.mark.parametrize(
    ("name", "metric", "floor", "measure"),
    [
        ("tagger", "heldout_token_accuracy", 0.8, heldout_tagger),
        ("wine", "heldout_accuracy", 0.9, heldout_wine),
        ("diabetes", "heldout_r2", 0.3, heldout_diabetes),
        ("digits-onnx", "heldout_accuracy", 0.95, heldout_digits_onnx),
    ],
)
def test_each_served_model_holds_its_quality_on_the_held_out_set(kclient, name, metric, floor, measure):
    """Measured here, with the served model on the build script's own held-out split, not read
    from the metadata: in band on this CPU, and what the release says of itself (within a couple
    of held-out samples: near-ties may round the other way on another CPU)."""
    meta = json.loads((MODELS / name / "1" / "metadata.json").read_text())
    served = kclient.application.extensions["funfleet.runtime"].get(name)
    measured, size = measure(served, int(meta["seed"]))
    assert measured >= floor, (name, metric, measured)
    assert size == meta["heldout_size"]
    assert measured == pytest.approx(meta[metric], abs=0.02), (name, metric, measured)


def test_readyz_lists_every_kind_with_its_task(kclient):
    body = kclient.get("/readyz").get_json()
    summary = {m["name"]: (m["input"], m["task"]) for m in body["models"]}
    assert summary == {
        "tagger": ("text", "tagging"),
        "wine": ("tensor", "classification"),
        "diabetes": ("tensor", "regression"),
        "digits-onnx": ("image", "classification"),
    }
    described = {m["name"]: m for m in kclient.get("/metadata").get_json()["models"]}
    assert described["wine"]["framework"] == "sklearn"
    assert described["wine"]["runtime"].startswith("scikit-learn ")
    assert described["digits-onnx"]["runtime"].startswith("onnxruntime ")
    assert described["tagger"]["signature"]["inputs"] == [{"name": "text", "dtype": "string", "shape": [-1]}]


# ---- text ----------------------------------------------------------------------------------


def test_tagger_predict_matches_keras(kclient, keras_models):
    scores = keras_models["tagger"].predict(np.array(SENTENCES, dtype=object), verbose=0)
    tags = read_release(MODELS / "tagger" / "1").labels
    for sentence, expected in zip(SENTENCES, scores, strict=True):
        response = kclient.post("/predict?model=tagger", json={"text": sentence})
        assert response.status_code == 200
        tokens = response.get_json()["tokens"]
        assert [t["token"] for t in tokens] == sentence.lower().split()
        assert [t["tag"] for t in tokens] == [tags[i] for i in expected.argmax(axis=-1)[: len(tokens)]]
        for t, row in zip(tokens, expected, strict=False):
            assert t["probability"] == pytest.approx(float(row.max()), abs=1e-5)


def test_tagger_tags_people_places_and_numbers(kclient):
    tokens = kclient.post("/predict?model=tagger", json={"text": "Bob works for Acme in Rome"}).get_json()["tokens"]
    assert [(t["token"], t["tag"]) for t in tokens] == [
        ("bob", "PER"),
        ("works", "O"),
        ("for", "O"),
        ("acme", "ORG"),
        ("in", "O"),
        ("rome", "LOC"),
    ]


def test_tagger_plain_text_body_and_errors(kclient):
    plain = kclient.post("/predict?model=tagger", data="Alice flew to Paris", content_type="text/plain")
    assert plain.status_code == 200
    assert plain.get_json()["tokens"][0]["token"] == "alice"
    assert kclient.post("/predict?model=tagger", json={"text": 5}).status_code == 422
    assert kclient.post("/predict?model=tagger", json={"words": "x"}).status_code == 400
    too_long = kclient.post("/predict?model=tagger", json={"text": "a " * 1001})
    assert (too_long.status_code, too_long.get_json()["code"]) == (413, "text_too_long")
    assert kclient.post("/predict?model=tagger", data=b"x", content_type="image/png").status_code == 415


def test_tagger_tfserving_rows_and_columns(kclient, keras_models):
    expected = keras_models["tagger"].predict(np.array(SENTENCES, dtype=object), verbose=0)
    rows = kclient.post("/v1/models/tagger:predict", json={"instances": SENTENCES})
    assert rows.status_code == 200
    np.testing.assert_allclose(np.array(rows.get_json()["predictions"]), expected, atol=1e-5)
    named = kclient.post("/v1/models/tagger:predict", json={"instances": [{"text": s} for s in SENTENCES]})
    np.testing.assert_allclose(np.array(named.get_json()["predictions"]), expected, atol=1e-5)
    columns = kclient.post("/v1/models/tagger:predict", json={"inputs": {"text": SENTENCES[:1]}})
    np.testing.assert_allclose(np.array(columns.get_json()["outputs"]), expected[:1], atol=1e-5)
    bad = kclient.post("/v1/models/tagger:predict", json={"instances": [1, 2]})
    assert bad.status_code == 400


@pytest.mark.parametrize("binary", [False, True])
def test_tagger_kserve_bytes_as_tritonclient_sends_them(kclient, keras_models, binary):
    import tritonclient.http as httpclient

    texts = np.array([s.encode() for s in SENTENCES], dtype=np.object_)
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=binary)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {}
    response = kclient.post("/v2/models/tagger/infer", data=body, headers=headers)
    assert response.status_code == 200, response.get_data()
    result = httpclient.InferenceServerClient.parse_response_body(
        response.get_data(), header_length=response.headers.get("Inference-Header-Content-Length")
    )
    expected = keras_models["tagger"].predict(np.array(SENTENCES, dtype=object), verbose=0)
    np.testing.assert_allclose(result.as_numpy("tags"), expected, atol=1e-5)


# ---- scikit-learn --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def estimator():
    import joblib

    path = MODELS / "wine" / "1" / "model.joblib"
    assert file_sha256(path) == read_release(MODELS / "wine" / "1").sha256
    return joblib.load(path)


def test_wine_predict_by_feature_name_matches_sklearn(kclient, estimator):
    names = features("wine")
    response = kclient.post("/predict?model=wine", json=dict(zip(names, WINE, strict=True)))
    assert response.status_code == 200
    body = response.get_json()
    expected = estimator.predict_proba(np.array([WINE], np.float32))[0]
    labels = read_release(MODELS / "wine" / "1").labels
    assert body["best_prediction"] == labels[int(expected.argmax())]
    for p in body["predictions"]:
        assert p["probability"] == pytest.approx(float(expected[labels.index(p["label"])]), abs=1e-5)
    missing = kclient.post("/predict?model=wine", json={"alcohol": 13.2})
    assert (missing.status_code, missing.get_json()["code"]) == (422, "invalid_features")


def test_wine_tensor_protocols_match_sklearn(kclient, estimator):
    batch = np.array([WINE, [12.0] * 13], np.float32)
    expected = estimator.predict_proba(batch)
    tfs = kclient.post("/v1/models/wine:predict", json={"instances": batch.tolist()})
    np.testing.assert_allclose(np.array(tfs.get_json()["predictions"]), expected, atol=1e-5)
    v2 = kclient.post(
        "/v2/models/wine/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 13], "data": batch.ravel().tolist()}]},
    )
    assert v2.status_code == 200
    out = v2.get_json()["outputs"][0]
    assert (out["name"], out["shape"]) == ("probabilities", [2, 3])
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 3), expected, atol=1e-5)


def test_a_joblib_from_another_sklearn_minor_is_refused(tmp_path):
    from inference import create_app

    root = kinds_dir(tmp_path / "model", ["wine"])
    meta_path = root / "wine" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["sklearn_version"] = "0.24.2"
    meta_path.write_text(json.dumps(meta))
    app = create_app({"model_dir": str(root)})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert "saved with scikit-learn 0.24.2" in response.get_json()["error"]


# ---- regression, several named outputs ----------------------------------------------------


def test_regression_returns_every_output_by_name(kclient, keras_models):
    names = features("diabetes")
    response = kclient.post("/predict?model=diabetes", json=dict(zip(names, DIABETES, strict=True)))
    assert response.status_code == 200
    body = response.get_json()
    progression, high_risk = keras_models["diabetes"].predict(np.array([DIABETES], np.float32), verbose=0)
    assert set(body["outputs"]) == {"progression", "high_risk"}
    assert body["outputs"]["progression"] == pytest.approx(progression[0].tolist(), abs=1e-3)
    assert body["outputs"]["high_risk"] == pytest.approx(high_risk[0].tolist(), abs=1e-5)
    tfs = kclient.post("/v1/models/diabetes:predict", json={"instances": [DIABETES]}).get_json()
    assert tfs["predictions"][0]["progression"] == pytest.approx(progression[0].tolist(), abs=1e-3)
    v2 = kclient.post(
        "/v2/models/diabetes/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 10], "data": DIABETES}]},
    ).get_json()
    assert [o["name"] for o in v2["outputs"]] == ["progression", "high_risk"]


def test_regression_outputs_are_counted_in_their_declared_buckets(kclient):
    """What a regression canary's answers are compared on: each instance's first output
    (progression), counted in the bucket of models.json's output_buckets it falls in."""
    from inference.metrics import bucket_names

    names = bucket_names(tuple(float(b) for b in DIABETES_BUCKETS))

    def buckets() -> dict[str, float]:
        text = kclient.get("/metrics").get_data(as_text=True)
        return {
            n: counter(text, "funfleet_prediction_outputs_total", model="diabetes", version="1", bucket=n)
            for n in names
        }

    rng = np.random.default_rng(7)
    rows = (np.array(DIABETES) * rng.uniform(0.5, 1.5, size=(40, 10))).round(3).tolist()
    before = buckets()
    answer = kclient.post("/v1/models/diabetes:predict", json={"instances": rows}).get_json()
    v2 = kclient.post(
        "/v2/models/diabetes/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 10], "data": rows[0]}]},
    )
    assert v2.status_code == 200
    after = buckets()
    values = [p["progression"][0] for p in answer["predictions"]] + [v2.get_json()["outputs"][0]["data"][0]]
    # Each value's bucket, from the values the app answered (no float compared across machines).
    expected = dict.fromkeys(names, 0)
    for value in values:
        expected[next((n for n, b in zip(names, DIABETES_BUCKETS, strict=False) if value <= b), "+Inf")] += 1
    assert {n: after[n] - before[n] for n in names} == expected
    assert sum(1 for n in names if expected[n]) >= 3  # the rows spread over several buckets
    # Models without declared buckets add no series.
    assert "funfleet_prediction_outputs_total{" not in "".join(
        line for line in kclient.get("/metrics").get_data(as_text=True).splitlines() if 'model="wine"' in line
    )


# ---- ONNX ----------------------------------------------------------------------------------


def test_onnx_predict_matches_the_exporters_reference_and_ort(kclient):
    import onnxruntime as ort

    release = read_release(MODELS / "digits-onnx" / "1")
    session = ort.InferenceSession(str(release.model_file), providers=["CPUExecutionProvider"])
    for digit in ("3", "7"):
        png = (SAMPLES / f"{digit}.png").read_bytes()
        response = kclient.post("/predict?model=digits-onnx", data=png, content_type="image/png")
        assert response.status_code == 200
        body = response.get_json()
        x = decode_image(png, release.input, 1 << 24)[None]
        assert x.shape == (1, 1, 16, 16)
        expected = session.run(None, {"input": x})[0][0]
        assert body["best_prediction"] == digit == str(int(expected.argmax()))
        assert body["predictions"][0]["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
    with np.load(release.path / "reference.npz") as ref:
        tfs = kclient.post("/v1/models/digits-onnx:predict", json={"instances": ref["inputs"][:4].tolist()})
        np.testing.assert_allclose(np.array(tfs.get_json()["predictions"]), ref["probabilities"][:4], atol=1e-5)


def _tamper_reference(root: Path, scale: float) -> None:
    folder = root / "digits-onnx" / "1"
    with np.load(folder / "reference.npz") as ref:
        inputs, probabilities = ref["inputs"], ref["probabilities"]
    with (folder / "reference.npz").open("wb") as fh:
        np.savez(fh, inputs=inputs, probabilities=probabilities * scale)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["files"]["reference.npz"] = file_sha256(folder / "reference.npz")
    (folder / "metadata.json").write_text(json.dumps(meta))


def test_an_onnx_release_that_disagrees_with_its_exporter_is_refused(tmp_path):
    from inference import create_app

    root = kinds_dir(tmp_path / "model", ["digits-onnx"])
    _tamper_reference(root, 0.5)
    response = create_app({"model_dir": str(root)}).test_client().get("/readyz")
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error.startswith("digits-onnx:1: output probabilities differs from the exporter's reference by up to")


def test_an_onnx_release_whose_reference_was_swapped_is_refused(tmp_path):
    from inference import create_app

    root = kinds_dir(tmp_path / "model", ["digits-onnx"])
    (root / "digits-onnx" / "1" / "reference.npz").write_bytes(b"swapped")
    response = create_app({"model_dir": str(root)}).test_client().get("/readyz")
    assert response.status_code == 503
    assert "sha256 mismatch" in response.get_json()["error"]
    assert "reference.npz" in response.get_json()["error"]


# ---- a real uWSGI and tritonclient ---------------------------------------------------------


def test_tritonclient_over_uwsgi_for_text_and_sklearn(kinds_server, keras_models, estimator):
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(kinds_server.removeprefix("http://"), network_timeout=30) as triton:
        assert triton.is_model_ready("tagger")
        assert triton.is_model_ready("wine")
        meta = triton.get_model_metadata("tagger")
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        text = httpclient.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array([s.encode() for s in SENTENCES[:2]], dtype=np.object_))
        tags = triton.infer("tagger", [text]).as_numpy("tags")
        expected = keras_models["tagger"].predict(np.array(SENTENCES[:2], dtype=object), verbose=0)
        np.testing.assert_allclose(tags, expected, atol=1e-5)
        row = httpclient.InferInput("features", [1, 13], "FP32")
        row.set_data_from_numpy(np.array([WINE], np.float32))
        probs = triton.infer("wine", [row]).as_numpy("probabilities")
        np.testing.assert_allclose(probs, estimator.predict_proba(np.array([WINE], np.float32)), atol=1e-5)


# ---- the demo models rebuild on any machine -----------------------------------------------


@pytest.mark.parametrize(
    ("script", "name", "metric", "floor"),
    [
        ("train_tagger.py", "tagger", "heldout_token_accuracy", 0.8),
        ("train_wine.py", "wine", "heldout_accuracy", 0.9),
        ("train_diabetes.py", "diabetes", "heldout_r2", 0.3),
        ("build_digits_onnx.py", "digits-onnx", "heldout_accuracy", 0.95),
    ],
)
def test_each_demo_model_rebuilds_into_a_loadable_release_in_band(tmp_path, script, name, metric, floor):
    """Weights differ from one CPU to another; the release's validity and its quality band do not."""
    import subprocess

    from inference import create_app

    result = subprocess.run(
        [sys.executable, str(MODELS / script), "--version", "1", "--out", str(tmp_path / name)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "app")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    release = read_release(tmp_path / name / "1")  # checks every listed file's sha256
    assert release.name == name
    assert release.extra[metric] >= floor
    app = create_app({"model_dir": str(tmp_path / name / "1")})
    assert app.extensions["funfleet.runtime"].ready, app.extensions["funfleet.runtime"].error
