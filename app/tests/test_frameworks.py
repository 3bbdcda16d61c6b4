"""One frameworks table (inference/frameworks.py): the release format, the loaders and the
requirements derive from it; a new framework is a row and its loader; an unknown one is refused
by name; and the table loads without the app's dependencies, as the controller loads it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT
from inference import backends, create_app, frameworks, models, release
from inference.release import ReleaseError, TensorSpec, read_release, write_release_metadata

APP = ROOT / "app"


def requirement_names(path) -> set[str]:
    names = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[=<>~!\[; ]", line, maxsplit=1)[0].lower())
    return names


@pytest.mark.parametrize("name", sorted(frameworks.FRAMEWORKS))
def test_every_framework_has_its_loader_and_its_packages(name):
    row = frameworks.FRAMEWORKS[name]
    assert callable(getattr(backends, row.loader))
    assert backends.loader_for(name) is getattr(backends, row.loader)
    for requirements in ("requirements.txt", "requirements-gpu.txt"):
        installed = requirement_names(APP / requirements)
        for package in row.packages:
            assert any(n == package or n.startswith(f"{package}-") for n in installed), (requirements, package)


def test_the_release_format_reads_the_table():
    assert frameworks.FRAMEWORKS["keras"].model_file == release.MODEL_FILE
    assert release.FRAMEWORKS is frameworks.FRAMEWORKS
    assert models.version_key is frameworks.version_key
    assert sorted(["10", "2", "b", "1", "a"], key=frameworks.version_key) == ["1", "2", "10", "a", "b"]


def _toy_release(root, framework: str = "toy"):
    root.mkdir(parents=True)
    (root / "model.toy").write_bytes(b"2.0\n")
    spec = TensorSpec(shape=(3,))
    write_release_metadata(root, name="toy", version="1", labels=[], spec=spec, top_k=1, extra={}, framework=framework)
    return root


def test_a_new_framework_is_a_row_and_its_loader(tmp_path, monkeypatch):
    """Nothing else in the app names frameworks: with a row and a loader, a release of it is
    verified, loaded, served and described like any other."""
    row = frameworks.Framework(
        "toy",
        model_file="model.toy",
        loader="load_toy",
        packages=(),
        runtime_mb=1,
        model_base_mb=1,
        model_file_factor=1,
    )
    monkeypatch.setitem(frameworks.FRAMEWORKS, "toy", row)

    def load_toy(rel, context):
        factor = float(rel.model_file.read_text())
        signature = backends.Signature(
            (backends.TensorInfo("x", "float32", (-1, 3)),), (backends.TensorInfo("y", "float32", (-1, 3)),)
        )
        return backends.Loaded(lambda batch: [np.asarray(batch) * factor], signature, 0.0, "toy 1")

    monkeypatch.setattr(backends, "load_toy", load_toy, raising=False)
    root = _toy_release(tmp_path / "toy" / "1")
    assert read_release(root).model_file.name == "model.toy"
    client = create_app({"model_dir": str(root)}).test_client()
    body = client.post("/v1/models/toy:predict", json={"instances": [[1, 2, 3]]}).get_json()
    assert body["predictions"] == [[2.0, 4.0, 6.0]]
    described = client.get("/metadata").get_json()["model"]
    assert (described["framework"], described["runtime"]) == ("toy", "toy 1")


def test_an_unknown_framework_is_refused_by_name(tmp_path):
    root = tmp_path / "caffe" / "1"
    shutil.copytree(ROOT / "files" / "models" / "iris" / "1", root)
    meta = json.loads((root / "metadata.json").read_text())
    (root / "metadata.json").write_text(json.dumps({**meta, "framework": "caffe"}))
    known = "keras, litert, onnx, sklearn"
    with pytest.raises(ReleaseError, match=rf"unknown framework 'caffe': funfleet serves {known}"):
        read_release(root)
    response = create_app({"model_dir": str(root)}).test_client().get("/readyz")
    assert response.status_code == 503
    assert "unknown framework 'caffe'" in response.get_json()["error"]
    with pytest.raises(frameworks.UnknownFramework, match="'caffe'"):
        backends.loader_for("caffe")
    with pytest.raises(frameworks.UnknownFramework, match="'caffe'"):
        _toy_release(tmp_path / "toy" / "1", framework="caffe")


def test_a_release_without_its_frameworks_required_files_is_refused(tmp_path):
    root = tmp_path / "digits-onnx" / "1"
    shutil.copytree(ROOT / "files" / "models" / "digits-onnx" / "1", root)
    meta = json.loads((root / "metadata.json").read_text())
    (root / "metadata.json").write_text(json.dumps({**meta, "files": {}}))
    with pytest.raises(ReleaseError, match=r"onnx releases must list reference\.npz in their metadata's files"):
        read_release(root)


def test_the_table_loads_without_the_apps_dependencies():
    """As the controller loads it: by path, no site-packages (no NumPy, TensorFlow, Flask), and
    without importing the inference package."""
    code = (
        "import importlib.util, json, sys\n"
        f"path = {str(APP / 'inference' / 'frameworks.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('table', path)\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['table'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert not {'numpy', 'inference', 'tensorflow', 'flask'} & set(sys.modules)\n"
        "print(json.dumps({n: f.model_file for n, f in module.FRAMEWORKS.items()}))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {n: f.model_file for n, f in frameworks.FRAMEWORKS.items()}
