"""Readiness, metadata, metrics, CORS and the release checks."""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import fields

import pytest
import yaml

from helpers import APP_DIR, MODEL_DIR, counter


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_is_503_until_loaded_then_200():
    from inference import create_app

    app = create_app({"model_dir": str(MODEL_DIR), "model_load": "none"})
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "loading"
    assert client.get("/healthz").status_code == 200
    assert client.post("/predict", data={"image": (io.BytesIO(b"x"), "x")}).status_code == 503
    app.extensions["funfleet.runtime"].load()
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ready",
        "model": "digits",
        "version": "1",
        "device": "/device:CPU:0",
        "release": None,
        "models": [{"name": "digits", "versions": ["1"], "input": "image", "task": "classification"}],
    }


def test_readyz_reports_the_deployed_release_id(tmp_path):
    """The app_release layout: <release>/{model,release.json}, reached through a `current` symlink."""
    from inference import create_app

    release = tmp_path / "releases" / "digits-1-abc123"
    shutil.copytree(MODEL_DIR, release / "model")
    (release / "release.json").write_text(json.dumps({"id": "digits-1-abc123", "model": "digits", "version": "1"}))
    (tmp_path / "current").symlink_to(release)
    app = create_app({"model_dir": str(tmp_path / "current" / "model")})
    body = app.test_client().get("/readyz").get_json()
    assert body["release"] == "digits-1-abc123"
    assert app.test_client().get("/metadata").get_json()["release"] == "digits-1-abc123"


def test_background_load_becomes_ready():
    from inference import create_app

    app = create_app({"model_dir": str(MODEL_DIR), "model_load": "background"})
    app.extensions["funfleet.loader"].join(timeout=60)
    assert app.test_client().get("/readyz").status_code == 200


def test_tampered_model_is_refused(tmp_path):
    from inference import create_app
    from inference.release import ReleaseError, read_release

    release = tmp_path / "1"
    shutil.copytree(MODEL_DIR, release)
    with (release / "model.keras").open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ReleaseError, match="sha256 mismatch"):
        read_release(release)
    # The worker stays up (no crash loop) and says why it is not ready, whichever way it loads.
    for mode in ("sync", "background"):
        app = create_app({"model_dir": str(release), "model_load": mode})
        if mode == "background":
            app.extensions["funfleet.loader"].join(timeout=60)
        client = app.test_client()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["status"] == "failed"
        assert "sha256 mismatch" in response.get_json()["error"]
        assert client.post("/predict", data=b"x", content_type="image/png").status_code == 503


def test_model_that_cannot_be_loaded_keeps_the_worker_up(tmp_path):
    """Right sha256, broken archive: the worker reports the load error instead of exiting."""
    from inference import create_app
    from inference.release import file_sha256

    release = tmp_path / "1"
    shutil.copytree(MODEL_DIR, release)
    (release / "model.keras").write_bytes(b"not a Keras archive")
    meta = json.loads((release / "metadata.json").read_text())
    meta["sha256"] = file_sha256(release / "model.keras")
    (release / "metadata.json").write_text(json.dumps(meta))
    body = create_app({"model_dir": str(release)}).test_client().get("/readyz").get_json()
    assert body["status"] == "failed"
    assert body["error"]


def test_metadata(client):
    body = client.get("/metadata").get_json()
    meta = json.loads((MODEL_DIR / "metadata.json").read_text())
    assert body["ready"] is True
    assert body["model"]["name"] == "digits"
    assert body["model"]["version"] == "1"
    assert body["model"]["sha256"] == meta["sha256"]
    assert body["model"]["input"]["shape"] == [32, 32, 3]
    assert body["model"]["labels"] == [str(i) for i in range(10)]
    assert body["model"]["heldout_accuracy"] >= 0.97
    assert body["runtime"]["device"] == "/device:CPU:0"
    assert re.fullmatch(r"2\.\d+\.\d+", body["runtime"]["tensorflow"])


def test_one_version_everywhere(client):
    """inference.__version__ is the package's version (pyproject reads it), and what /metadata,
    KServe's server metadata and the OpenAPI document say."""
    from inference import __version__

    tomllib = pytest.importorskip("tomllib")  # Python 3.11's

    project = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "inference.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert client.get("/metadata").get_json()["service"]["version"] == __version__
    assert client.get("/v2").get_json()["version"] == __version__
    assert yaml.safe_load((APP_DIR / "openapi.yaml").read_text())["info"]["version"] == __version__


def test_metrics_count_requests_by_endpoint_and_status(client, samples):
    before = client.get("/metrics").get_data(as_text=True)
    for _ in range(3):
        client.post("/predict", data={"image": (io.BytesIO(samples["1"]), "1.png")})
    client.post("/predict", data={"image": (io.BytesIO(b"nope"), "x.png")})
    after = client.get("/metrics").get_data(as_text=True)
    ok = dict(endpoint="/predict", method="POST", status="200")
    bad = dict(endpoint="/predict", method="POST", status="415")
    assert (
        counter(after, "funfleet_http_requests_total", **ok) - counter(before, "funfleet_http_requests_total", **ok)
        == 3
    )
    assert (
        counter(after, "funfleet_http_requests_total", **bad) - counter(before, "funfleet_http_requests_total", **bad)
        == 1
    )
    assert (
        counter(after, "funfleet_inference_duration_seconds_count")
        - counter(before, "funfleet_inference_duration_seconds_count")
        == 3
    )
    assert (
        counter(after, "funfleet_predictions_total", model="digits", version="1")
        - counter(before, "funfleet_predictions_total", model="digits", version="1")
        == 3
    )
    assert 'funfleet_http_request_duration_seconds_bucket{endpoint="/predict",le="0.5",status="200"}' in after


def test_cors_is_off_by_default(client):
    response = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_allows_configured_origins():
    from inference import create_app

    app = create_app({"model_dir": str(MODEL_DIR), "model_load": "none", "cors_origins": "https://ui.example"})
    client = app.test_client()
    allowed = client.options(
        "/predict", headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    )
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    other = client.get("/healthz", headers={"Origin": "https://other.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_settings_reject_unknown_keys():
    from inference.config import Settings

    with pytest.raises(ValueError, match="unknown setting"):
        Settings.from_env({"modle_dir": "/x"})
    assert Settings.from_env(environ={"FUNFLEET_MAX_REQUEST_INSTANCES": "7"}).max_request_instances == 7
    assert Settings.from_env(environ={"FUNFLEET_CORS_ORIGINS": "a, b"}).cors_origins == ("a", "b")
    assert "extra" not in {f.name for f in fields(Settings)}


@pytest.mark.parametrize(
    ("old", "new"), [("tf_intra_op_threads", "intra_op_threads"), ("max_batch", "max_request_instances")]
)
def test_settings_renamed_are_still_read_by_their_former_names(old, new):
    """FUNFLEET_TF_INTRA_OP_THREADS is what hosts configured before the rename have; the new name wins."""
    from inference.config import Settings

    assert getattr(Settings.from_env(environ={f"FUNFLEET_{old.upper()}": "3"}), new) == 3
    assert getattr(Settings.from_env({old: 3}, environ={}), new) == 3
    both = {f"FUNFLEET_{old.upper()}": "3", f"FUNFLEET_{new.upper()}": "5"}
    assert getattr(Settings.from_env(environ=both), new) == 5
    assert getattr(Settings.from_env({old: 3, new: 5}, environ={}), new) == 5


def test_workers_spread_over_gpus_round_robin():
    from inference.runtime import gpu_for_worker

    assert [gpu_for_worker(w, 4) for w in range(1, 10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert [gpu_for_worker(w, 1) for w in (1, 2, 3)] == [0, 0, 0]
    assert gpu_for_worker(None, 4) is None  # not under uWSGI
    assert gpu_for_worker(3, 0) is None  # CPU host


def test_a_gpu_host_worker_on_the_cpu_is_not_ready():
    """FUNFLEET_DEVICE=gpu (what the uwsgi role sets on GPU hosts): a worker TensorFlow would run
    on the CPU answers 503 "failed" with the reason, so a deploy stops instead of serving slowly."""
    from inference import create_app

    app = create_app({"model_dir": str(MODEL_DIR), "device": "gpu"})
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "failed"
    assert body["error"].startswith("RuntimeError: this is a GPU host (FUNFLEET_DEVICE=gpu) but TensorFlow sees no GPU")
    assert client.post("/v1/models/digits:predict", json={"instances": [[[[0.0] * 3] * 32] * 32]}).status_code == 503
