"""Filters that work out, on the controller, which model versions a release holds.

app_release_resolve_models: each declared model's version folders (TF Serving's layout: a base
path holding one folder per version), chosen by its version policy, with each version's metadata.
app_release_model_memory_mb: the memory one worker needs for those versions (an estimate).
app_release_files: every file to ship, one row per (model, version, file).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
from itertools import pairwise
from types import ModuleType

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # the unit tests import this file without Ansible's error classes
    AnsibleFilterError = ValueError  # type: ignore[misc,assignment]

# The frameworks table is the app's own (app/inference/frameworks.py), read from the checked-out
# repo by path, as app_release_app_src finds the app: the controller refuses, finds and sizes a
# model exactly as the app will. The file imports only the standard library, so neither
# TensorFlow nor the app's other dependencies are needed here, and the inference package (whose
# __init__ imports Flask) is never imported.
FRAMEWORKS_FILE = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "app", "inference", "frameworks.py")
)


def _load_frameworks() -> ModuleType:
    name = f"_funfleet_frameworks:{FRAMEWORKS_FILE}"  # one per checkout this plugin may be loaded from
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FRAMEWORKS_FILE)
    if spec is None or spec.loader is None or not os.path.isfile(FRAMEWORKS_FILE):
        raise AnsibleFilterError(
            f"the app's frameworks table is not at {FRAMEWORKS_FILE} (the role runs from the repo)"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses looks its module up while building the table's class
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


frameworks = _load_frameworks()


def _read_version(name: str, folder: str) -> dict:
    try:
        with open(os.path.join(folder, "metadata.json")) as fh:
            meta = json.load(fh)
        framework = str(meta.get("framework", frameworks.DEFAULT))
        extra = sorted(str(f) for f in dict(meta.get("files") or {}))
        if any("/" in f or f.startswith(".") for f in extra):
            raise ValueError(f"files must be plain names in the release folder: {extra}")
        model_file = frameworks.check_files(framework, extra).model_file  # an unknown framework: refused by name
        size = os.path.getsize(os.path.join(folder, model_file))
        for other in extra:
            os.stat(os.path.join(folder, other))
    except frameworks.UnknownFramework as exc:
        raise AnsibleFilterError(f"model {name}: {folder}: {exc}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise AnsibleFilterError(f"model {name}: {folder} is not a model release ({exc})") from exc
    if str(meta.get("name")) != name:
        raise AnsibleFilterError(f"model {name}: {folder} holds model {meta.get('name')!r}, not {name!r}")
    # Names, versions and digests become paths on the hosts and on the artifact source
    # (models/<sha256>): nothing in a release's metadata may walk out of its folder.
    for field, pattern in (("name", PATH_PART), ("version", PATH_PART), ("sha256", SHA256)):
        if not pattern.fullmatch(str(meta.get(field, ""))):
            raise AnsibleFilterError(
                f"model {name}: {folder}: metadata {field} {str(meta.get(field, ''))[:80]!r} is not {pattern.pattern}"
            )
    return {
        "version": str(meta.get("version")),
        "src": folder,
        "framework": framework,
        "model_file": model_file,
        "files": [model_file, "labels.json", "metadata.json", *extra],
        "sha256": str(meta.get("sha256", "")),
        "size": size,
        "meta": meta,
    }


def _choose(name: str, available: list[str], policy: dict) -> list[str]:
    """TF Serving's version policies: latest N (default 1), specific versions, or all."""
    policy = policy or {"latest": 1}
    if len(policy) != 1 or next(iter(policy)) not in ("latest", "specific", "all"):
        raise AnsibleFilterError(
            f"model {name}: version_policy is one of {{latest: N}}, {{specific: [..]}}, {{all: true}}"
        )
    ordered = sorted(available, key=frameworks.version_key)
    if "all" in policy:
        return ordered
    if "latest" in policy:
        count = int(policy["latest"])
        if count < 1:
            raise AnsibleFilterError(f"model {name}: version_policy latest must be 1 or more")
        return ordered[-count:]
    wanted = sorted({str(v) for v in policy["specific"]}, key=frameworks.version_key)
    missing = [v for v in wanted if v not in available]
    if not wanted or missing:
        raise AnsibleFilterError(f"model {name}: versions {missing or wanted} are not in its base path ({ordered})")
    return wanted


def _check_pickle(name: str, versions: list[dict], allowed: bool) -> None:
    """A model whose file runs code when it loads (a pickle) is shipped only where allowed by name."""
    for version in versions:
        if frameworks.framework(version["framework"]).runs_code_on_load and not allowed:
            raise AnsibleFilterError(
                f"model {name}: version {version['version']} is a {version['framework']} model "
                f"({version['model_file']}), a pickle that runs code as the service user on every host when it "
                f"loads. Ship it only from a source you trust: allow_pickle: true on model {name} in "
                "app_release_models (or -e app_release_model_src_allow_pickle=true with app_release_model_src)."
            )


def app_release_resolve_models(
    models: list[dict], model_src: str = "", models_dir: str = "", model_src_allow_pickle: bool = False
) -> list[dict]:
    """The models a release holds, in declared order (the first is the default), each with the
    versions its policy keeps, oldest first. ``model_src`` (one release folder) replaces the list
    with that single model version. A relative base_path is taken under ``models_dir``. A model
    saved as a pickle is refused unless its entry says ``allow_pickle: true``."""
    if model_src:
        try:
            with open(os.path.join(model_src, "metadata.json")) as fh:
                name = str(json.load(fh)["name"])
        except (OSError, ValueError, KeyError) as exc:
            raise AnsibleFilterError(f"{model_src} is not a model release ({exc})") from exc
        versions = [_read_version(name, model_src)]
        _check_pickle(name, versions, bool(model_src_allow_pickle))
        return [{"name": name, "versions": versions}]
    if not models:
        raise AnsibleFilterError("app_release_models is empty: declare at least one model")
    resolved, seen = [], set()
    for model in models:
        name, base = str(model["name"]), os.path.join(models_dir, str(model["base_path"]))
        if name in seen:
            raise AnsibleFilterError(f"model {name} is declared twice")
        seen.add(name)
        if not os.path.isdir(base):
            raise AnsibleFilterError(f"model {name}: base_path {base} is not a folder on the controller")
        available = [entry for entry in os.listdir(base) if os.path.isfile(os.path.join(base, entry, "metadata.json"))]
        if not available:
            raise AnsibleFilterError(f"model {name}: no version folder (<version>/metadata.json) in {base}")
        versions = []
        for folder in _choose(name, available, model.get("version_policy")):
            version = _read_version(name, os.path.join(base, folder))
            if version["version"] != folder:
                raise AnsibleFilterError(f"model {name}: folder {folder} holds version {version['version']}")
            versions.append(version)
        _check_pickle(name, versions, model.get("allow_pickle") is True)
        entry = {"name": name, "versions": versions}
        labels = _labels(name, model.get("version_labels"), [v["version"] for v in versions])
        if labels:  # only then: a release without labels keeps its id and manifest
            entry["labels"] = labels
        buckets = _output_buckets(name, model.get("output_buckets"))
        if buckets:
            entry["output_buckets"] = buckets
        resolved.append(entry)
    return resolved


# As the app checks them (app/inference/models.py): a label starts with a letter, never taken for a version.
PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _labels(name: str, labels: object, served: list[str]) -> dict[str, str]:
    """A model's version labels (TF Serving's version_labels: stable, canary), each naming one of
    the versions its policy keeps: a label on a version not served is refused here, before any
    host is touched, as TF Serving refuses it."""
    if not labels:
        return {}
    if not isinstance(labels, dict):
        raise AnsibleFilterError(f"model {name}: version_labels is a mapping of label: version, e.g. {{stable: 1}}")
    checked = {}
    for label in labels:
        if not isinstance(label, str):  # YAML reads on, off, yes, no and null as other types
            raise AnsibleFilterError(f"model {name}: version label {label!r} must be a string: quote it")
    for label, version in sorted(labels.items()):
        if not LABEL.fullmatch(label):
            raise AnsibleFilterError(
                f"model {name}: version label {label!r} must start with a letter "
                "(then letters, digits, '_', '.' or '-')"
            )
        if str(version) not in served:
            raise AnsibleFilterError(
                f"model {name}: version label {label} names version {version}, which this release does not serve "
                f"(its version_policy keeps {', '.join(served)})"
            )
        checked[str(label)] = str(version)
    return checked


# As the app bounds them (app/inference/models.py): a bucket per bound and one above the last.
MAX_OUTPUT_BUCKETS = 63


def _output_buckets(name: str, bounds: object) -> list[float]:
    """A regression model's output buckets: the ascending upper bounds its first output's values
    are counted in (funfleet_prediction_outputs_total), which a canary's answers are compared on."""
    if not bounds:
        return []
    if not isinstance(bounds, list) or not all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds
    ):
        raise AnsibleFilterError(f"model {name}: output_buckets is a list of finite numbers, e.g. [50, 100, 150]")
    if len(bounds) > MAX_OUTPUT_BUCKETS:
        raise AnsibleFilterError(f"model {name}: output_buckets has {len(bounds)} bounds, at most {MAX_OUTPUT_BUCKETS}")
    if any(a >= b for a, b in pairwise(bounds)):
        raise AnsibleFilterError(f"model {name}: output_buckets must be strictly ascending: {bounds}")
    return [float(b) for b in bounds]


def app_release_ledger_conflicts(resolved: list[dict], ledger: dict) -> list[str]:
    """Versions whose sha256 differs from the one the ledger recorded when that version was first
    released: a released version never changes, so its file or its metadata was changed since."""
    return [
        f"{model['name']}:{version['version']} was released with sha256 {ledger[model['name']][version['version']]}, "
        f"and its metadata now says {version['sha256']} ({version['src']})"
        for model in resolved
        for version in model["versions"]
        if str(version["version"]) in (ledger.get(model["name"]) or {})
        and ledger[model["name"]][str(version["version"])] != version["sha256"]
    ]


def app_release_ledger_pin(resolved: list[dict], ledger: dict) -> list[dict]:
    """The release with each version's sha256 taken from the ledger where it holds the version
    (what every host then checks): the controller's record, not the metadata shipped beside it."""
    return [
        {
            **model,
            "versions": [
                {**version, "sha256": (ledger.get(model["name"]) or {}).get(str(version["version"]), version["sha256"])}
                for version in model["versions"]
            ],
        }
        for model in resolved
    ]


def app_release_ledger_add(ledger: dict, resolved: list[dict]) -> dict:
    """The ledger with every version of the release recorded (a version already there keeps its record)."""
    merged = {name: dict(versions) for name, versions in (ledger or {}).items()}
    for model in resolved:
        for version in model["versions"]:
            merged.setdefault(model["name"], {}).setdefault(str(version["version"]), version["sha256"])
    return {
        name: dict(sorted(versions.items(), key=lambda kv: frameworks.version_key(kv[0])))
        for name, versions in sorted(merged.items())
    }


def app_release_model_memory_mb(resolved: list[dict]) -> int:
    """Estimated resident memory of one worker serving these model versions (MiB): the app's
    frameworks table holds the numbers (and how they were measured)."""
    return frameworks.worker_memory_mb(
        (version.get("framework", frameworks.DEFAULT), version["size"])
        for model in resolved
        for version in model["versions"]
    )


def app_release_version_dir(pair: list, root: str) -> str:
    """The folder of one (model, version) pair under a release's model folder."""
    model, version = pair
    return f"{root}/{model['name']}/{version['version']}"


def app_release_files(resolved: list[dict], root: str) -> list[dict]:
    """One row per file to ship: its source on the controller, its path under ``root`` and, for a
    version's model file, its recorded sha256 (the other files, "" : they travel from the controller)."""
    return [
        {
            "label": f"{model['name']}:{version['version']}/{name}",
            "src": os.path.join(version["src"], name),
            "dest": f"{root}/{model['name']}/{version['version']}/{name}",
            "sha256": version["sha256"] if name == version["model_file"] else "",
        }
        for model in resolved
        for version in model["versions"]
        for name in version["files"]
    ]


def app_release_manifest(resolved: list[dict]) -> list[dict]:
    """What models.json and release.json list: names and versions, each version's sha256, and
    the model's version labels and output buckets where it has any."""
    return [
        {
            "name": model["name"],
            "versions": [v["version"] for v in model["versions"]],
            "sha256": {v["version"]: v["sha256"] for v in model["versions"]},
            **({"labels": model["labels"]} if model.get("labels") else {}),
            **({"output_buckets": model["output_buckets"]} if model.get("output_buckets") else {}),
        }
        for model in resolved
    ]


class FilterModule:
    def filters(self) -> dict:
        return {
            "app_release_resolve_models": app_release_resolve_models,
            "app_release_version_dir": app_release_version_dir,
            "app_release_manifest": app_release_manifest,
            "app_release_files": app_release_files,
            "app_release_model_memory_mb": app_release_model_memory_mb,
            "app_release_ledger_conflicts": app_release_ledger_conflicts,
            "app_release_ledger_add": app_release_ledger_add,
            "app_release_ledger_pin": app_release_ledger_pin,
        }
