"""What the app's tests share besides fixtures (those stay in conftest.py): the repository's
paths, payload helpers, model folders laid out as hosts have them, and a real uWSGI.

Importable as ``helpers`` (the root pyproject's pytest ``pythonpath`` has app/tests)."""

from __future__ import annotations

from .formats import counter, encode
from .models import DIABETES_BUCKETS, KINDS, build_models_dir, kinds_dir, load_training_script
from .paths import APP_DIR, BASE_INI, IRIS_DIR, MODEL_DIR, ROOT, SAMPLES, SAMPLES_INVERTED
from .signals import flask_requests
from .uwsgi import free_port, serve_uwsgi, uwsgi_binary, uwsgi_command, wait_ready

__all__ = [
    "APP_DIR",
    "BASE_INI",
    "DIABETES_BUCKETS",
    "IRIS_DIR",
    "KINDS",
    "MODEL_DIR",
    "ROOT",
    "SAMPLES",
    "SAMPLES_INVERTED",
    "build_models_dir",
    "counter",
    "encode",
    "flask_requests",
    "free_port",
    "kinds_dir",
    "load_training_script",
    "serve_uwsgi",
    "uwsgi_binary",
    "uwsgi_command",
    "wait_ready",
]
