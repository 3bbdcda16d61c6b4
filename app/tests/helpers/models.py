"""Model folders as hosts have them, and the training script the samples come from."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from .paths import IRIS_DIR, MODEL_DIR, ROOT


def load_training_script() -> ModuleType:
    """files/models/train_digits.py as a module (its split and rendering are what the samples come from)."""
    folder = str(ROOT / "files" / "models")
    if folder not in sys.path:  # as when it runs: its own folder (training.py) importable
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location("train_digits", ROOT / "files" / "models" / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_models_dir(root: Path) -> Path:
    """A host's model folder as the app_release role lays it out: digits 1 (the default), and
    iris 1 and 2 (2 cut from 1 by the release tools' cut), with the manifest in declared order and
    version labels (digits stable: 1; iris stable: 1, canary: 2)."""
    models = root / "models"
    shutil.copytree(MODEL_DIR, models / "digits" / "1")
    shutil.copytree(IRIS_DIR, models / "iris" / "1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "inference.release_tools",
            "cut",
            str(IRIS_DIR),
            "2",
            "--out",
            str(models / "iris" / "2"),
        ],
        check=True,
        capture_output=True,
    )
    manifest = {
        "models": [
            {"name": "digits", "versions": ["1"], "labels": {"stable": "1"}},
            {"name": "iris", "versions": ["1", "2"], "labels": {"stable": "1", "canary": "2"}},
        ]
    }
    (models / "models.json").write_text(json.dumps(manifest))
    return models


KINDS = ["tagger", "wine", "diabetes", "digits-onnx"]


# The regression model's output buckets (its progression, in the data's own units, 25 to 346).
DIABETES_BUCKETS = [50, 100, 150, 200, 250, 300]


def kinds_dir(root: Path, kinds: list[str] = KINDS) -> Path:
    """A model folder with the demo model of every kind beside the image classifiers: text
    (tagger), scikit-learn (wine), regression (diabetes), ONNX (digits-onnx)."""
    for name in kinds:
        shutil.copytree(ROOT / "files" / "models" / name / "1", root / name / "1")
    models = [
        {"name": n, "versions": ["1"], **({"output_buckets": DIABETES_BUCKETS} if n == "diabetes" else {})}
        for n in kinds
    ]
    (root / "models.json").write_text(json.dumps({"models": models}))
    return root
