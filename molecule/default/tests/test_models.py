"""Two models on one host (the digits CNN and the iris tabular model, declared in the local
inventory), answered through nginx over /predict, TF Serving's REST API and KServe v2 (by
tritonclient); then one model rolled to a new version under load, keep-alive clients included,
with 0 failed requests for either model, and the version before it still answering while the
version policy keeps it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from fleetcheck import BASE, ROOT, Load, playbook, wait_ready

testinfra_hosts = ["funfleet-default-app1"]
VIRGINICA = {"sepal_length_cm": 6.3, "sepal_width_cm": 3.3, "petal_length_cm": 6.0, "petal_width_cm": 2.5}


def readyz() -> dict:
    return requests.get(f"{BASE}/readyz", timeout=5).json()


def models_extra(iris_base: Path, policy: dict, labels: dict | None = None) -> str:
    iris = {"name": "iris", "base_path": str(iris_base), "version_policy": policy}
    return json.dumps(
        {
            "app_release_models": [
                {"name": "digits", "base_path": "digits"},
                {**iris, **({"version_labels": labels} if labels else {})},
            ]
        }
    )


@pytest.fixture(scope="module")
def iris_base(tmp_path_factory) -> Path:
    """The iris model's base path with a version 2 cut from version 1 (inference.release_tools cut)."""
    base = tmp_path_factory.mktemp("models") / "iris"
    base.mkdir()
    source = ROOT / "files" / "models" / "iris" / "1"
    for version in ("1", "2"):
        cut = [
            sys.executable,
            "-m",
            "inference.release_tools",
            "cut",
            str(source),
            version,
            "--out",
            str(base / version),
        ]
        subprocess.run(cut, check=True, capture_output=True, timeout=60)
    return base


def test_both_declared_models_serve_through_nginx():
    body = readyz()
    assert [(m["name"], m["versions"]) for m in body["models"]] == [("digits", ["1"]), ("iris", ["1"])]
    response = requests.post(f"{BASE}/predict?model=iris", json=VIRGINICA, timeout=10)
    assert response.status_code == 200
    assert response.json()["best_prediction"] == "virginica"
    assert response.json()["model"] == {"name": "iris", "version": "1"}
    status = requests.get(f"{BASE}/v1/models/iris", timeout=5).json()
    assert [v["version"] for v in status["model_version_status"]] == ["1"]


def test_tritonclient_through_nginx():
    with httpclient.InferenceServerClient(BASE.removeprefix("http://"), network_timeout=30) as client:
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        assert client.is_model_ready("iris")
        assert client.get_model_metadata("iris")["inputs"] == [
            {"name": "features", "datatype": "FP32", "shape": [-1, 4]}
        ]
        rows = np.array([list(VIRGINICA.values())], np.float32)
        tensor = httpclient.InferInput("features", [1, 4], "FP32")
        tensor.set_data_from_numpy(rows)
        assert client.infer("iris", [tensor]).as_numpy("species").argmax(axis=1).tolist() == [2]


def test_rolling_one_model_to_a_new_version_drops_nothing_and_keeps_the_old_one(host, iris_base):
    with (
        Load(threads=3, keepalive=2) as digits,
        Load(threads=3, keepalive=2, model="iris", features=VIRGINICA, label="virginica") as iris,
    ):
        result = playbook("deploy.yml", "-e", models_extra(iris_base, {"latest": 2}, {"stable": 1, "canary": 2}))
    assert result.returncode == 0, result.stdout[-3000:]
    assert digits.failures == [], digits.summary()
    assert iris.failures == [], iris.summary()
    assert digits.ok >= 50, digits.summary()
    assert iris.ok >= 50, iris.summary()
    assert set(digits.versions) == {"1"}, digits.summary()
    assert set(iris.versions) == {"1", "2"}, iris.summary()
    wait_ready()
    body = readyz()
    assert [(m["name"], m["versions"]) for m in body["models"]] == [("digits", ["1"]), ("iris", ["1", "2"])]
    assert body["release"].startswith("digits-1+iris-1.2-")
    manifest = json.loads(host.file("/opt/funfleet/current/model/models.json").content_string)
    assert [(m["name"], m["versions"]) for m in manifest["models"]] == [("digits", ["1"]), ("iris", ["1", "2"])]
    for version in ("1", "2"):
        response = requests.post(
            f"{BASE}/v1/models/iris/versions/{version}:predict", json={"instances": [VIRGINICA]}, timeout=10
        )
        assert response.status_code == 200
        assert int(np.argmax(response.json()["predictions"][0])) == 2
        assert requests.get(f"{BASE}/v2/models/iris/versions/{version}/ready", timeout=5).status_code == 200
    labels_through_nginx()
    # The numbers for the note (a passing test's output is not shown).
    (ROOT / ".cache").mkdir(exist_ok=True)
    (ROOT / ".cache" / "models-rollout.txt").write_text(f"digits: {digits.summary()}\niris: {iris.summary()}\n")


def labels_through_nginx() -> None:
    """The inventory's version labels (stable 1, canary 2) in every protocol, through nginx: as a
    TF Serving REST client calls, with tritonclient, and on /predict; an unknown label is a 404."""
    assert next(m for m in readyz()["models"] if m["name"] == "iris")["labels"] == {"canary": "2", "stable": "1"}
    for label, version in (("stable", "1"), ("canary", "2")):
        tf = requests.post(f"{BASE}/v1/models/iris/labels/{label}:predict", json={"instances": [VIRGINICA]}, timeout=10)
        assert tf.status_code == 200, tf.text
        assert int(np.argmax(tf.json()["predictions"][0])) == 2
        status = requests.get(f"{BASE}/v1/models/iris/labels/{label}", timeout=5).json()["model_version_status"]
        assert [s["version"] for s in status] == [version]
        own = requests.post(f"{BASE}/predict?model=iris&label={label}", json=VIRGINICA, timeout=10)
        assert own.json()["model"] == {"name": "iris", "version": version}, own.text
        with httpclient.InferenceServerClient(BASE.removeprefix("http://"), network_timeout=30) as client:
            tensor = httpclient.InferInput("features", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.array([list(VIRGINICA.values())], np.float32))
            result = client.infer(f"iris/labels/{label}", [tensor])
            assert result.get_response()["model_version"] == version
            assert result.as_numpy("species").argmax(axis=1).tolist() == [2]
    unknown = requests.post(f"{BASE}/v1/models/iris/labels/beta:predict", json={"instances": [VIRGINICA]}, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "Unrecognized servable version label: beta"


def test_a_policy_that_drops_the_old_version_stops_answering_it(iris_base):
    result = playbook("deploy.yml", "-e", models_extra(iris_base, {"latest": 1}))
    assert result.returncode == 0, result.stdout[-3000:]
    wait_ready()
    assert [(m["name"], m["versions"]) for m in readyz()["models"]] == [("digits", ["1"]), ("iris", ["2"])]
    gone = requests.post(f"{BASE}/v1/models/iris/versions/1:predict", json={"instances": [VIRGINICA]}, timeout=10)
    assert gone.status_code == 404
    assert gone.json()["error"] == "Servable not found for request: Specific(iris, 1)"
    assert requests.get(f"{BASE}/v2/models/iris/versions/1/ready", timeout=5).status_code == 404


def test_a_layout_larger_than_the_host_is_refused_with_the_numbers(host, iris_base):
    before = host.file("/opt/funfleet/current").linked_to
    result = playbook("deploy.yml", "-e", models_extra(iris_base, {"all": True}), "-e", "app_release_workers=100000")
    assert result.returncode == 2
    words = " ".join((result.stdout + result.stderr).split())
    assert "100000 workers x 610 MiB" in words, words[-2000:]
    assert "Serve fewer versions (version_policy) or models, or run fewer workers." in words
    assert host.file("/opt/funfleet/current").linked_to == before


def test_every_model_kind_next_to_digits_through_nginx(host, iris_base):
    """Text (Keras, tokenizer inside), scikit-learn (joblib), regression with two named outputs
    and an ONNX export (ONNX Runtime, NCHW) beside the digits CNN, from the host's own wheels."""
    kinds = ["tagger", "wine", "diabetes", "digits-onnx"]
    models = [
        {"name": "digits", "base_path": "digits"},
        {"name": "iris", "base_path": str(iris_base), "version_policy": {"latest": 1}},
    ] + [{"name": name, "base_path": name} for name in kinds]
    # wine is a joblib pickle, which runs code when it loads: refused until the inventory allows it.
    before = host.file("/opt/funfleet/current").linked_to
    refused = playbook("deploy.yml", "-e", json.dumps({"app_release_models": models}))
    words = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2, words[-3000:]
    assert "model wine: version 1 is a sklearn model (model.joblib), a pickle that runs code" in words
    assert host.file("/opt/funfleet/current").linked_to == before
    models[3]["allow_pickle"] = True
    result = playbook("deploy.yml", "-e", json.dumps({"app_release_models": models}))
    assert result.returncode == 0, result.stdout[-3000:]
    wait_ready()
    body = readyz()
    assert [(m["name"], m["task"]) for m in body["models"]] == [
        ("digits", "classification"),
        ("iris", "classification"),
        ("tagger", "tagging"),
        ("wine", "classification"),
        ("diabetes", "regression"),
        ("digits-onnx", "classification"),
    ]
    # The ONNX export's reference file went with it and its sha256 was checked.
    assert host.file("/opt/funfleet/current/model/digits-onnx/1/reference.npz").exists
    assert host.file("/opt/funfleet/current/model/wine/1/model.joblib").mode == 0o644

    tagged = requests.post(f"{BASE}/predict?model=tagger", json={"text": "Bob works for Acme in Rome"}, timeout=10)
    assert tagged.status_code == 200
    assert [(t["token"], t["tag"]) for t in tagged.json()["tokens"]] == [
        ("bob", "PER"),
        ("works", "O"),
        ("for", "O"),
        ("acme", "ORG"),
        ("in", "O"),
        ("rome", "LOC"),
    ]
    wine_features = json.loads((ROOT / "files" / "models" / "wine" / "1" / "metadata.json").read_text())["input"]
    row = [13.2, 1.78, 2.14, 11.2, 100.0, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050.0]
    wine = requests.post(
        f"{BASE}/predict?model=wine", json=dict(zip(wine_features["features"], row, strict=True)), timeout=10
    )
    assert wine.status_code == 200
    assert wine.json()["best_prediction"] == "class_0"
    diabetes = requests.post(
        f"{BASE}/v1/models/diabetes:predict",
        json={"instances": [[59, 2, 32.1, 101, 157, 93.2, 38, 4, 4.86, 87]]},
        timeout=10,
    )
    assert diabetes.status_code == 200
    assert set(diabetes.json()["predictions"][0]) == {"progression", "high_risk"}
    png = (ROOT / "files" / "samples" / "digits" / "7.png").read_bytes()
    onnx = requests.post(
        f"{BASE}/predict?model=digits-onnx", data=png, headers={"Content-Type": "image/png"}, timeout=10
    )
    assert onnx.status_code == 200
    assert onnx.json()["best_prediction"] == "7"
    with httpclient.InferenceServerClient(BASE.removeprefix("http://"), network_timeout=30) as client:
        text = httpclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"Alice flew to Paris"], dtype=np.object_))
        tags = client.infer("tagger", [text]).as_numpy("tags")
        assert tags.shape == (1, 24, 5)
        assert tags[0, 0].argmax() == 1  # alice: PER
    # The numbers for the note: each model's memory in a worker, and the worker's.
    # /metadata is an ops endpoint: private to loopback and the monitoring hosts.
    meta = json.loads(
        host.check_output(
            "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1/metadata').read().decode())\""
        )
    )
    lines = [f"{m['name']}:{m['version']} {m['runtime']} {m['memory_bytes'] / 2**20:.1f} MiB" for m in meta["models"]]
    lines.append(f"worker {meta['runtime']['resident_bytes'] / 2**20:.0f} MiB")
    (ROOT / ".cache").mkdir(exist_ok=True)
    (ROOT / ".cache" / "kinds-memory.txt").write_text("\n".join(lines) + "\n")
