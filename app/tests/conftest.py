"""Fixtures: the app with the real demo model, in process and under a real uWSGI. The helpers
the tests share are the ``helpers`` package beside this file."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import MODEL_DIR, SAMPLES, SAMPLES_INVERTED, build_models_dir, kinds_dir, serve_uwsgi
from inference import logs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def app():
    from inference import create_app

    return create_app({"model_dir": str(MODEL_DIR), "max_content_length": 2 * 1024 * 1024})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def samples() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(SAMPLES.glob("*.png"))}


@pytest.fixture(scope="session")
def inverted_samples() -> dict[str, bytes]:
    """The same held-out digits, light ink on a dark background (as MNIST-style images are)."""
    return {p.stem: p.read_bytes() for p in sorted(SAMPLES_INVERTED.glob("*.png"))}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return build_models_dir(tmp_path_factory.mktemp("host"))


@pytest.fixture(scope="session")
def multi_app(models_dir):
    from inference import create_app

    return create_app({"model_dir": str(models_dir)})


@pytest.fixture
def multi_client(multi_app):
    return multi_app.test_client()


@pytest.fixture(scope="session")
def uwsgi_server(tmp_path_factory, models_dir) -> Iterator[str]:
    """A real uWSGI: master, lazy-apps, 2 processes, HTTP on 127.0.0.1, multiprocess metrics,
    serving the digits model (the default) and two versions of the iris model."""
    yield from serve_uwsgi(tmp_path_factory, models_dir)


@pytest.fixture(scope="session")
def kinds(tmp_path_factory) -> Path:
    return kinds_dir(tmp_path_factory.mktemp("kinds") / "model")


@pytest.fixture(scope="session")
def kinds_server(tmp_path_factory, kinds) -> Iterator[str]:
    """A real uWSGI serving every kind's demo model."""
    yield from serve_uwsgi(tmp_path_factory, kinds)


@pytest.fixture
def log_lines():
    """The JSON log lines written while the test runs, parsed."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
