"""Where the repository keeps what the app's tests use."""

from __future__ import annotations

from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2]
ROOT = APP_DIR.parent
MODEL_DIR = ROOT / "files" / "models" / "digits" / "1"
IRIS_DIR = ROOT / "files" / "models" / "iris" / "1"
SAMPLES = ROOT / "files" / "samples" / "digits"
SAMPLES_INVERTED = ROOT / "files" / "samples" / "digits-inverted"
BASE_INI = ROOT / "roles" / "uwsgi" / "files" / "base.ini"
