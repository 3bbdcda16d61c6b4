"""The app_release role's model resolution on the controller: version policies, the single-folder
override, refusals with reasons, and the memory estimate, on the real demo releases."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "app_release_models", ROOT / "roles" / "app_release" / "filter_plugins" / "app_release_models.py"
)
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)


@pytest.fixture
def iris_base(tmp_path) -> Path:
    """iris with versions 1, 2 and 10 (10 sorts after 2: versions are numbers)."""
    base = tmp_path / "iris"
    for version in ("1", "2", "10"):
        shutil.copytree(ROOT / "files" / "models" / "iris" / "1", base / version)
        meta = json.loads((base / version / "metadata.json").read_text())
        (base / version / "metadata.json").write_text(json.dumps({**meta, "version": version}))
    return base


def versions(resolved: list[dict]) -> dict[str, list[str]]:
    return {m["name"]: [v["version"] for v in m["versions"]] for m in resolved}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, ["10"]),
        ({"latest": 2}, ["2", "10"]),
        ({"latest": 5}, ["1", "2", "10"]),
        ({"specific": [1, "10"]}, ["1", "10"]),
        ({"all": True}, ["1", "2", "10"]),
    ],
)
def test_version_policies(iris_base, policy, expected):
    models = [{"name": "digits", "base_path": str(ROOT / "files" / "models" / "digits")}]
    models.append({"name": "iris", "base_path": str(iris_base), "version_policy": policy})
    resolved = plugin.app_release_resolve_models(models)
    assert versions(resolved) == {"digits": ["1"], "iris": expected}
    assert [m["name"] for m in resolved] == ["digits", "iris"]
    assert (
        resolved[1]["versions"][-1]["sha256"] == json.loads((iris_base / "1" / "metadata.json").read_text())["sha256"]
    )


def test_model_src_serves_one_folder_alone(iris_base):
    resolved = plugin.app_release_resolve_models([{"name": "x", "base_path": "/nope"}], str(iris_base / "2"))
    assert versions(resolved) == {"iris": ["2"]}
    assert plugin.app_release_manifest(resolved) == [
        {"name": "iris", "versions": ["2"], "sha256": {"2": resolved[0]["versions"][0]["sha256"]}}
    ]


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([], "app_release_models is empty"),
        ([{"name": "iris", "base_path": "/nonexistent"}], "is not a folder on the controller"),
        ([{"name": "iris", "base_path": "{base}", "version_policy": {"specific": [3]}}], "versions ['3'] are not"),
        ([{"name": "iris", "base_path": "{base}", "version_policy": {"newest": 1}}], "version_policy is"),
        ([{"name": "digits", "base_path": "{base}"}], "holds model 'iris', not 'digits'"),
        ([{"name": "iris", "base_path": "{base}"}, {"name": "iris", "base_path": "{base}"}], "declared twice"),
    ],
)
def test_refusals_say_why(iris_base, models, message):
    models = [{**m, "base_path": m["base_path"].format(base=iris_base)} for m in models]
    with pytest.raises(plugin.AnsibleFilterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plugin.app_release_resolve_models(models)


def test_memory_estimate_grows_with_each_version(iris_base):
    digits = plugin.app_release_resolve_models(
        [{"name": "digits", "base_path": str(ROOT / "files" / "models" / "digits")}]
    )
    both = plugin.app_release_resolve_models(
        [
            {"name": "digits", "base_path": str(ROOT / "files" / "models" / "digits")},
            {"name": "iris", "base_path": str(iris_base), "version_policy": {"all": True}},
        ]
    )
    # 48 MiB app + 512 TensorFlow + the digits CNN (8 + 16 x 1.6 MiB) = 594; each iris version adds 8.4.
    assert plugin.app_release_model_memory_mb(digits) == 594
    assert plugin.app_release_model_memory_mb(both) == 619
    assert plugin.app_release_version_dir([both[1], both[1]["versions"][0]], "/r/model") == "/r/model/iris/1"


def test_every_framework_ships_its_own_files_and_memory():
    models = ROOT / "files" / "models"
    resolved = plugin.app_release_resolve_models(
        [{"name": "wine", "base_path": "wine"}, {"name": "digits-onnx", "base_path": "digits-onnx"}],
        models_dir=str(models),
    )
    wine, onnx = (m["versions"][0] for m in resolved)
    assert (wine["framework"], wine["model_file"]) == ("sklearn", "model.joblib")
    assert onnx["files"] == ["model.onnx", "labels.json", "metadata.json", "reference.npz"]
    rows = plugin.app_release_files(resolved, "/r/model")
    assert {
        "label": "digits-onnx:1/reference.npz",
        "src": str(models / "digits-onnx" / "1" / "reference.npz"),
        "dest": "/r/model/digits-onnx/1/reference.npz",
    } in rows
    assert len(rows) == 7
    # No Keras model: no TensorFlow in the worker. 48 + 88 (scikit-learn) + 32 (ONNX Runtime)
    # + each model's 2 MiB and 4 x its file (1.3 KB, 67 KB).
    assert plugin.app_release_model_memory_mb(resolved) == 172


def test_an_unknown_framework_or_a_missing_listed_file_is_refused(tmp_path):
    for change, reason in (
        ({"framework": "caffe"}, "unknown framework 'caffe'"),
        ({"files": {"reference.npz": "x", "gone.bin": "y"}}, "gone.bin"),
    ):
        base = tmp_path / reason.split()[0] / "digits-onnx"
        shutil.copytree(ROOT / "files" / "models" / "digits-onnx" / "1", base / "1")
        meta = json.loads((base / "1" / "metadata.json").read_text())
        (base / "1" / "metadata.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(plugin.AnsibleFilterError, match=reason):
            plugin.app_release_resolve_models([{"name": "digits-onnx", "base_path": str(base)}])
