"""Which model versions a host serves, read from ``FUNFLEET_MODEL_DIR``.

Two layouts:

- one release folder (``metadata.json`` in it): a single model, a single version (the app's
  tests, ``make serve-app``, a model folder tried by hand);
- TF Serving's layout, one folder per model holding one folder per version
  (``<dir>/<name>/<version>/metadata.json``), with ``models.json`` listing the models in the
  order they were declared (the first is the default of ``/predict``) and the versions each
  serves. The app_release role writes it after applying each model's version policy; without it
  every model folder and every version in it is served, models in name order.

A model in ``models.json`` may carry version labels, as TF Serving's ``version_labels``:
``"labels": {"stable": "1", "canary": "2"}``, each naming one of the versions it serves, so that
clients can pin ``stable`` or opt into ``canary`` while the versions behind them move.

A regression model may carry output buckets, ``"output_buckets": [50, 100, 150]``: the ascending
upper bounds its first output's values are counted in, so that a canary's answers can be compared
with the baseline's as a classifier's top-1 classes are.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from .frameworks import version_key
from .release import METADATA_FILE, ReleaseError

MANIFEST = "models.json"
# A label starts with a letter, so that it can never be taken for a version (TF Serving's are numbers).
LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
# A bucket per bound and one above the last: at most 64 series per model version.
MAX_OUTPUT_BUCKETS = 63


@dataclass(frozen=True)
class Declared:
    name: str
    version: str
    path: Path


def discover(model_dir: str | Path) -> list[Declared]:
    """Every model version to serve, the default model's first, each model's versions oldest first."""
    root = Path(model_dir)
    if (root / METADATA_FILE).is_file():
        try:
            meta = json.loads((root / METADATA_FILE).read_text())
            return [Declared(str(meta["name"]), str(meta["version"]), root)]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReleaseError(f"cannot read release at {root}: {exc}") from exc
    manifest = root / MANIFEST
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text())["models"]
            models = [(str(m["name"]), [str(v) for v in m["versions"]]) for m in listed]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReleaseError(f"malformed {manifest}: {exc}") from exc
    elif root.is_dir():
        models = [
            (d.name, [v.name for v in d.iterdir() if (v / METADATA_FILE).is_file()])
            for d in sorted(root.iterdir())
            if d.is_dir()
        ]
        models = [(name, versions) for name, versions in models if versions]
    else:
        raise ReleaseError(f"model folder {root} does not exist")
    declared = [
        Declared(name, version, root / name / version)
        for name, versions in models
        for version in sorted(versions, key=version_key)
    ]
    if not declared:
        raise ReleaseError(f"no model release under {root}")
    names = [name for name, _versions in models]
    if len(set(names)) != len(names):
        raise ReleaseError(f"a model is declared twice in {root}: {names}")
    return declared


def labels(model_dir: str | Path, declared: list[Declared]) -> dict[str, dict[str, str]]:
    """Each model's version labels from ``models.json`` (none without it), checked against the
    versions ``declared`` serves: a label that names a version not served is an error, as TF
    Serving refuses a label on an unavailable version."""
    manifest = Path(model_dir) / MANIFEST
    if not manifest.is_file():
        return {}
    served: dict[str, set[str]] = {}
    for item in declared:
        served.setdefault(item.name, set()).add(item.version)
    found: dict[str, dict[str, str]] = {}
    try:
        listed = json.loads(manifest.read_text())["models"]
        for model in listed:
            name, named = str(model["name"]), model.get("labels") or {}
            if not isinstance(named, dict):
                raise TypeError(f"labels of {name} must be an object of label: version")
            for label, version in named.items():
                if not isinstance(label, str) or not LABEL.fullmatch(label):
                    raise ValueError(f"label {label!r} of {name}: a letter, then letters, digits, '_', '.' or '-'")
                if str(version) not in served.get(name, set()):
                    raise ValueError(f"label {label!r} of {name} names version {version}, which is not served")
                found.setdefault(name, {})[str(label)] = str(version)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"malformed {manifest}: {exc}") from exc
    return found


def output_buckets(model_dir: str | Path) -> dict[str, tuple[float, ...]]:
    """Each model's output buckets from ``models.json`` (none without it): finite, strictly
    ascending, at most MAX_OUTPUT_BUCKETS bounds."""
    manifest = Path(model_dir) / MANIFEST
    if not manifest.is_file():
        return {}
    found: dict[str, tuple[float, ...]] = {}
    try:
        for model in json.loads(manifest.read_text())["models"]:
            name, bounds = str(model["name"]), model.get("output_buckets")
            if not bounds:
                continue
            if not isinstance(bounds, list) or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds
            ):
                raise ValueError(f"output_buckets of {name} must be a list of finite numbers")
            if len(bounds) > MAX_OUTPUT_BUCKETS or any(a >= b for a, b in pairwise(bounds)):
                raise ValueError(f"output_buckets of {name}: at most {MAX_OUTPUT_BUCKETS}, strictly ascending")
            found[name] = tuple(float(b) for b in bounds)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"malformed {manifest}: {exc}") from exc
    return found
