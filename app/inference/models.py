"""Which model versions a host serves, read from ``FUNFLEET_MODEL_DIR``.

Two layouts:

- one release folder (``metadata.json`` in it): a single model, a single version (the app's
  tests, ``make serve-app``, a model folder tried by hand);
- TF Serving's layout, one folder per model holding one folder per version
  (``<dir>/<name>/<version>/metadata.json``), with ``models.json`` listing the models in the
  order they were declared (the first is the default of ``/predict``) and the versions each
  serves. The app_release role writes it after applying each model's version policy; without it
  every model folder and every version in it is served, models in name order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .frameworks import version_key
from .release import METADATA_FILE, ReleaseError

MANIFEST = "models.json"


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
