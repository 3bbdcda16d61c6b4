"""The lighter CPU runtime: a Keras release converted to LiteRT by ``python -m
inference.release_tools convert``, gated by parity with the Keras model on the release's sample
set, served without TensorFlow.

Scores are compared within the gate's bound (1e-4), labels exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import MODEL_DIR, ROOT, SAMPLES
from inference.preprocess import decode_image
from inference.release import file_sha256, read_release

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def convert(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inference.release_tools", "convert", str(source), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "app")},
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("litert") / "digits" / "1"
    result = convert(MODEL_DIR, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def lclient(converted):
    from inference import create_app

    app = create_app({"model_dir": str(converted)})
    assert app.extensions["funfleet.runtime"].ready, app.extensions["funfleet.runtime"].error
    return app.test_client()


def test_the_converted_release_records_its_parity(converted):
    release = read_release(converted)  # every listed file's sha256 checks
    assert release.framework == "litert"
    assert release.model_file.name == "model.tflite"
    meta = json.loads((converted / "metadata.json").read_text())
    source = read_release(MODEL_DIR)
    assert meta["converted_from"] == {"framework": "keras", "version": "1", "sha256": source.sha256}
    assert meta["parity"]["samples"] == 10
    assert meta["parity"]["top1_agreement"] == 1.0
    assert 0 <= meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["output_names"] == ["output"]
    assert release.labels == source.labels


def test_litert_answers_as_keras_does(lclient):
    import keras

    model = keras.saving.load_model(MODEL_DIR / "model.keras", compile=False)
    spec = read_release(MODEL_DIR).input
    labels = read_release(MODEL_DIR).labels
    for digit in ("0", "3", "7", "9"):
        png = (SAMPLES / f"{digit}.png").read_bytes()
        expected = model.predict(decode_image(png, spec, 1 << 24)[None], verbose=0)[0]
        body = lclient.post("/predict", data=png, content_type="image/png").get_json()
        assert body["best_prediction"] == labels[int(expected.argmax())] == digit
        for p in body["predictions"]:
            assert p["probability"] == pytest.approx(float(expected[labels.index(p["label"])]), abs=1e-4)
    batch = np.stack([decode_image((SAMPLES / f"{d}.png").read_bytes(), spec, 1 << 24) for d in "0123"])
    tfs = lclient.post("/v1/models/digits:predict", json={"instances": batch.tolist()}).get_json()
    np.testing.assert_allclose(np.array(tfs["predictions"]), model.predict(batch, verbose=0), atol=1e-4)
    meta = lclient.get("/v1/models/digits/metadata").get_json()
    outputs = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    assert list(outputs) == ["output"]


def test_a_litert_worker_never_imports_tensorflow(converted):
    code = (
        "import sys; from inference import create_app;"
        f"app = create_app({{'model_dir': {str(converted)!r}}});"
        "rt = app.extensions['funfleet.runtime'];"
        "import json; print('RESULT', json.dumps([rt.ready, 'tensorflow' in sys.modules, 'keras' in sys.modules,"
        " rt.get().runtime]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "app", capture_output=True, text=True, timeout=120, check=True
    )
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    assert json.loads(line.removeprefix("RESULT ")) == [True, False, False, "litert 2.3.0"]


def test_a_lossy_conversion_is_refused_with_the_numbers(tmp_path):
    out = tmp_path / "digits" / "1"
    result = convert(MODEL_DIR, out, "--optimize", "dynamic", "--max-abs-diff", "1e-6")
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("convert: the LiteRT conversion of digits:1 fails the parity gate: max abs diff ")
    assert "(at most 1e-06), top-1 agreement" in message
    assert "on 10 samples" in message
    assert not out.exists()


def test_a_text_model_is_not_converted(tmp_path):
    result = convert(ROOT / "files" / "models" / "tagger" / "1", tmp_path / "t" / "1")
    assert result.returncode == 2
    assert "only Keras image and tensor models convert" in result.stderr


def test_a_converted_model_that_drifts_from_its_keras_reference_is_refused_at_load(converted, tmp_path):
    import shutil

    from inference import create_app

    copy = tmp_path / "digits" / "1"
    shutil.copytree(converted, copy)
    with np.load(copy / "reference.npz") as ref:
        inputs, output = ref["inputs"], ref["output"]
    with (copy / "reference.npz").open("wb") as fh:
        np.savez(fh, inputs=inputs, output=np.roll(output, 1, axis=1))
    meta = json.loads((copy / "metadata.json").read_text())
    meta["files"]["reference.npz"] = file_sha256(copy / "reference.npz")
    (copy / "metadata.json").write_text(json.dumps(meta))
    response = create_app({"model_dir": str(copy)}).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["error"].startswith("digits:1: output output differs from the exporter's reference")
