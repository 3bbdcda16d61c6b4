"""The app_release role's model resolution on the controller: version policies, the single-folder
override, refusals with reasons, and the memory estimate, on the real demo releases."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PLUGIN = ROOT / "plugins" / "filter" / "app_release_models.py"
_spec = importlib.util.spec_from_file_location("app_release_models", _PLUGIN)
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
        [
            {"name": "wine", "base_path": "wine", "allow_pickle": True},
            {"name": "digits-onnx", "base_path": "digits-onnx"},
        ],
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
        "sha256": "",
    } in rows
    assert len(rows) == 7
    # Only the model file carries its sha256: it is what an artifact source serves by digest.
    assert [r["label"] for r in rows if r["sha256"]] == ["wine:1/model.joblib", "digits-onnx:1/model.onnx"]
    assert next(r for r in rows if r["label"] == "digits-onnx:1/model.onnx")["sha256"] == onnx["sha256"]
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


def test_a_release_without_its_frameworks_required_files_is_refused_before_shipping(tmp_path):
    base = tmp_path / "digits-onnx"
    shutil.copytree(ROOT / "files" / "models" / "digits-onnx" / "1", base / "1")
    meta = json.loads((base / "1" / "metadata.json").read_text())
    (base / "1" / "metadata.json").write_text(json.dumps({**meta, "files": {}}))
    with pytest.raises(plugin.AnsibleFilterError, match=r"onnx releases must list reference\.npz"):
        plugin.app_release_resolve_models([{"name": "digits-onnx", "base_path": str(base)}])


def test_the_unknown_framework_refusal_names_it_and_what_is_served(tmp_path):
    base = tmp_path / "iris"
    shutil.copytree(ROOT / "files" / "models" / "iris" / "1", base / "1")
    meta = json.loads((base / "1" / "metadata.json").read_text())
    (base / "1" / "metadata.json").write_text(json.dumps({**meta, "framework": "caffe"}))
    expected = r"model iris: .*/iris/1: unknown framework 'caffe': funfleet serves keras, litert, onnx, sklearn"
    with pytest.raises(plugin.AnsibleFilterError, match=expected):
        plugin.app_release_resolve_models([{"name": "iris", "base_path": str(base)}])


def test_the_plugin_reads_the_apps_own_table():
    """One table: the plugin holds no framework names, files or sizes of its own."""
    from inference import frameworks

    assert Path(plugin.FRAMEWORKS_FILE) == Path(frameworks.__file__).resolve()
    assert {n: dataclasses.asdict(f) for n, f in plugin.frameworks.FRAMEWORKS.items()} == {
        n: dataclasses.asdict(f) for n, f in frameworks.FRAMEWORKS.items()
    }
    assert plugin.frameworks.version_key("10") == frameworks.version_key("10")
    source = (ROOT / "plugins" / "filter" / "app_release_models.py").read_text()
    for name in frameworks.FRAMEWORKS:
        assert f'"{name}"' not in source, name
    for row in frameworks.FRAMEWORKS.values():
        assert row.model_file not in source, row.model_file


def _plugin_at(root: Path) -> ModuleType:
    path = root / "plugins" / "filter" / "app_release_models.py"
    spec = importlib.util.spec_from_file_location(f"plugin_copy_{abs(hash(str(root)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_new_framework_is_one_row_for_the_controller(tmp_path):
    """A checkout whose table has one more row: the controller resolves, ships and sizes a
    release of it with no other change."""
    checkout = tmp_path / "checkout"
    for part in ("plugins/filter/app_release_models.py", "app/inference/frameworks.py"):
        (checkout / part).parent.mkdir(parents=True)
        shutil.copyfile(ROOT / part, checkout / part)
    table = checkout / "app" / "inference" / "frameworks.py"
    table.write_text(
        table.read_text()
        + '\nFRAMEWORKS["toy"] = Framework("toy", model_file="model.toy", loader="load_toy", packages=(),'
        + " runtime_mb=10, model_base_mb=1, model_file_factor=1)\n"
    )
    copy = _plugin_at(checkout)
    base = tmp_path / "models" / "toy"
    (base / "1").mkdir(parents=True)
    (base / "1" / "model.toy").write_bytes(b"x" * 2**20)
    meta = {"name": "toy", "version": "1", "framework": "toy", "sha256": "0" * 64, "input": {}}
    (base / "1" / "metadata.json").write_text(json.dumps(meta))
    resolved = copy.app_release_resolve_models([{"name": "toy", "base_path": str(base)}])
    assert resolved[0]["versions"][0]["files"] == ["model.toy", "labels.json", "metadata.json"]
    assert copy.app_release_model_memory_mb(resolved) == 48 + 10 + 1 + 1
    with pytest.raises(plugin.AnsibleFilterError, match="unknown framework 'toy'"):
        plugin.app_release_resolve_models([{"name": "toy", "base_path": str(base)}])  # this checkout's table


def test_the_plugin_needs_neither_ansible_nor_the_apps_dependencies():
    """Loaded as the controller may load it: no site-packages at all (no NumPy, TensorFlow, Flask)."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('p', {str(_PLUGIN)!r})\n"
        "p = importlib.util.module_from_spec(spec); spec.loader.exec_module(p)\n"
        f"models = {str(ROOT / 'files' / 'models')!r}\n"
        "r = p.app_release_resolve_models([{'name': 'digits', 'base_path': 'digits'}], '', models)\n"
        "assert not {'numpy', 'inference', 'tensorflow', 'flask'} & set(sys.modules)\n"
        "print(json.dumps(p.app_release_model_memory_mb(r)))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == 594


def test_a_pickle_is_shipped_only_where_allowed_by_name():
    """scikit-learn's joblib file runs code when it loads: refused unless the model says allow_pickle
    (or, for one folder, app_release_model_src_allow_pickle)."""
    models = ROOT / "files" / "models"
    with pytest.raises(
        plugin.AnsibleFilterError, match=r"model wine: version 1 is a sklearn model \(model.joblib\), a pickle"
    ):
        plugin.app_release_resolve_models([{"name": "wine", "base_path": "wine"}], models_dir=str(models))
    with pytest.raises(plugin.AnsibleFilterError, match="allow_pickle: true on model wine"):
        plugin.app_release_resolve_models([], model_src=str(models / "wine" / "1"))
    assert plugin.app_release_resolve_models([], model_src=str(models / "wine" / "1"), model_src_allow_pickle=True)
    # Not a pickle: no setting needed.
    assert plugin.app_release_resolve_models([{"name": "digits", "base_path": "digits"}], models_dir=str(models))


def test_the_ledger_refuses_a_released_version_whose_sha256_changed(iris_base):
    resolved = plugin.app_release_resolve_models(
        [{"name": "iris", "base_path": str(iris_base), "version_policy": {"all": True}}]
    )
    ledger = plugin.app_release_ledger_add({}, resolved)
    digest = resolved[0]["versions"][0]["sha256"]
    assert ledger == {"iris": {"1": digest, "2": digest, "10": digest}}  # numeric order
    assert plugin.app_release_ledger_conflicts(resolved, ledger) == []
    # Version 2's model file replaced and its metadata rewritten to match: refused by the record.
    model_file = iris_base / "2" / "model.keras"
    model_file.write_bytes(model_file.read_bytes() + b"tampered")
    meta = json.loads((iris_base / "2" / "metadata.json").read_text())
    meta["sha256"] = hashlib.sha256(model_file.read_bytes()).hexdigest()
    (iris_base / "2" / "metadata.json").write_text(json.dumps(meta))
    again = plugin.app_release_resolve_models(
        [{"name": "iris", "base_path": str(iris_base), "version_policy": {"all": True}}]
    )
    conflicts = plugin.app_release_ledger_conflicts(again, ledger)
    assert len(conflicts) == 1
    assert conflicts[0].startswith(
        f"iris:2 was released with sha256 {digest}, and its metadata now says {meta['sha256']}"
    )
    # Recording again keeps the first record.
    assert plugin.app_release_ledger_add(ledger, again) == ledger


def test_version_labels_name_served_versions_and_reach_the_manifest(iris_base):
    plain = {"name": "iris", "base_path": str(iris_base), "version_policy": {"latest": 2}}
    labelled = {**plain, "version_labels": {"stable": 2, "canary": "10"}}
    resolved = plugin.app_release_resolve_models([labelled])
    assert resolved[0]["labels"] == {"canary": "10", "stable": "2"}
    manifest = plugin.app_release_manifest(resolved)
    assert manifest[0]["labels"] == {"canary": "10", "stable": "2"}
    # Without labels the model's entry (and so the release id, a hash of it) is what it was.
    unlabelled = plugin.app_release_resolve_models([plain])
    assert "labels" not in unlabelled[0]
    assert "labels" not in plugin.app_release_manifest(unlabelled)[0]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"stable": 1}, "names version 1, which this release does not serve (its version_policy keeps 2, 10)"),
        ({"2": 2}, "version label '2' must start with a letter"),
        ({"has space": 2}, "version label 'has space' must start with a letter"),
        (["stable"], "version_labels is a mapping of label: version"),
        ({"stable\n": 2}, "version label 'stable\\n' must start with a letter"),
        ({True: 2, "stable": 2}, "version label True must be a string: quote it"),
    ],
)
def test_version_labels_refused_with_reasons(iris_base, labels, message):
    model = {"name": "iris", "base_path": str(iris_base), "version_policy": {"latest": 2}, "version_labels": labels}
    with pytest.raises(plugin.AnsibleFilterError, match=re.escape(message)):
        plugin.app_release_resolve_models([model])


def test_the_controller_and_the_app_check_labels_alike():
    app_models = (ROOT / "app" / "inference" / "models.py").read_text()
    assert f'LABEL = re.compile(r"{plugin.LABEL.pattern}")' in app_models


def test_output_buckets_reach_the_manifest_as_numbers(iris_base):
    plain = {"name": "iris", "base_path": str(iris_base), "version_policy": {"latest": 2}}
    resolved = plugin.app_release_resolve_models([{**plain, "output_buckets": [0, 2.5, 100]}])
    assert plugin.app_release_manifest(resolved)[0]["output_buckets"] == [0.0, 2.5, 100.0]
    # Without buckets the model's entry (and so the release id) is what it was.
    assert "output_buckets" not in plugin.app_release_manifest(plugin.app_release_resolve_models([plain]))[0]


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ([1, 1, 2], "must be strictly ascending"),
        ([3, 2], "must be strictly ascending"),
        (["1", 2], "a list of finite numbers"),
        ([True, 2], "a list of finite numbers"),
        ([float("nan")], "a list of finite numbers"),
        ({"bounds": [1]}, "a list of finite numbers"),
        (list(range(64)), "has 64 bounds, at most 63"),
    ],
)
def test_output_buckets_refused_with_reasons(iris_base, bounds, message):
    model = {"name": "iris", "base_path": str(iris_base), "output_buckets": bounds}
    with pytest.raises(plugin.AnsibleFilterError, match=re.escape(message)):
        plugin.app_release_resolve_models([model])


def test_the_controller_and_the_app_bound_output_buckets_alike():
    app_models = (ROOT / "app" / "inference" / "models.py").read_text()
    assert f"MAX_OUTPUT_BUCKETS = {plugin.MAX_OUTPUT_BUCKETS}" in app_models


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "../../../etc/cron.d/x"),  # would name the file the artifact source writes
        ("sha256", "A" * 64),
        ("sha256", ""),
        ("name", "../iris"),
        ("version", "1/../../2"),
    ],
)
def test_metadata_that_would_walk_out_of_a_folder_is_refused(tmp_path, field, value):
    """A release's name, version and sha256 become paths on the hosts and on the artifact source
    (models/<sha256>): the controller refuses any that is not a plain name or a hex digest."""
    src = tmp_path / "release"
    shutil.copytree(ROOT / "files" / "models" / "digits" / "1", src)
    meta = json.loads((src / "metadata.json").read_text())
    meta[field] = value
    (src / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(plugin.AnsibleFilterError, match=f"metadata {field} "):
        plugin.app_release_resolve_models([], model_src=str(src))
