"""A worker imports what its models need and no more: TensorFlow's and Keras's optional imports
of scikit-learn and SciPy are hidden while they import (69 MiB a worker), and a scikit-learn
model loaded after them still gets scikit-learn. Each case runs in a fresh interpreter, as a
worker does: this test process has long imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import APP_DIR, MODEL_DIR, kinds_dir

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from inference import create_app
    app = create_app({"model_dir": sys.argv[1]})
    client = app.test_client()
    answer = {"ready": client.get("/readyz").status_code, "modules": sorted(m for m in ("sklearn", "scipy") if m in sys.modules)}
    if len(sys.argv) > 2:
        answer["predict"] = client.post(sys.argv[2], json=json.loads(sys.argv[3])).get_json()
    print(json.dumps(answer))
    """
)


def _run(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], cwd=APP_DIR, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_keras_worker_does_not_import_scikit_learn_or_scipy():
    assert _run(str(MODEL_DIR)) == {"ready": 200, "modules": []}


def test_a_scikit_learn_model_beside_keras_models_still_loads_and_predicts(tmp_path):
    models = kinds_dir(tmp_path / "model", ["tagger", "wine"])
    features = json.loads((models / "wine" / "1" / "metadata.json").read_text())["input"]["features"]
    row = dict.fromkeys(features, 1.0)
    answer = _run(str(models), "/predict?model=wine", json.dumps(row))
    assert answer["ready"] == 200
    assert answer["modules"] == ["scipy", "sklearn"]
    assert answer["predict"]["model"] == {"name": "wine", "version": "1"}
    assert answer["predict"]["best_prediction"] in json.loads((models / "wine" / "1" / "labels.json").read_text())


def test_hidden_modules_fail_inside_and_import_after():
    from inference.runtime import hidden_modules

    name = "funfleet_test_hidden_module"
    sys.modules.pop(name, None)
    with hidden_modules(name, "json"):
        with pytest.raises(ImportError, match=name):
            __import__(name)
        import json as again  # already imported before the block: never hidden

        assert again is json
    assert name not in sys.modules
