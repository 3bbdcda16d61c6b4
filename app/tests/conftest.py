"""Fixtures: the app with the real demo model, in process and under a real uWSGI."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import requests
from PIL import Image

APP_DIR = Path(__file__).resolve().parents[1]
ROOT = APP_DIR.parent
MODEL_DIR = ROOT / "files" / "models" / "digits" / "1"
IRIS_DIR = ROOT / "files" / "models" / "iris" / "1"
SAMPLES = ROOT / "files" / "samples" / "digits"
SAMPLES_INVERTED = ROOT / "files" / "samples" / "digits-inverted"

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


def load_training_script() -> ModuleType:
    """scripts/train_digits.py as a module (its split and rendering are what the samples come from)."""
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:  # as when it runs: its own folder (training.py) importable
        sys.path.append(scripts)
    spec = importlib.util.spec_from_file_location("train_digits", ROOT / "scripts" / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def counter(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uwsgi_binary() -> str:
    found = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")
    if not found:
        pytest.fail("uwsgi is not installed in this environment (pip install -r app/requirements.txt)")
    return found


def wait_ready(base: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uWSGI exited with {proc.returncode}")
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{base} not ready after {seconds}s")


BASE_INI = ROOT / "roles" / "uwsgi" / "files" / "base.ini"


def uwsgi_command(address: str, log: Path) -> list[str]:
    """The options every app host runs (the uwsgi role's base.ini) and this test's own lines."""
    return [
        uwsgi_binary(),
        "--ini",
        str(BASE_INI),
        "--processes",
        "2",
        "--http-socket",
        address,
        "--chdir",
        str(APP_DIR),
        "--module",
        "wsgi:app",
        "--logto",
        str(log),
        # uWSGI's http-socket closes the connection after each response without saying so; a
        # client that pools connections (tritonclient) would then send its next POST into a
        # closed socket. On hosts nginx speaks to uWSGI, so this is the tests' own line.
        "--add-header",
        "Connection: close",
    ]


def build_models_dir(root: Path) -> Path:
    """A host's model folder as the app_release role lays it out: digits 1 (the default), and
    iris 1 and 2 (2 cut from 1 by scripts/cut-release), with the manifest in declared order."""
    models = root / "models"
    shutil.copytree(MODEL_DIR, models / "digits" / "1")
    shutil.copytree(IRIS_DIR, models / "iris" / "1")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "cut-release"),
            str(IRIS_DIR),
            "2",
            "--out",
            str(models / "iris" / "2"),
        ],
        check=True,
        capture_output=True,
    )
    manifest = {"models": [{"name": "digits", "versions": ["1"]}, {"name": "iris", "versions": ["1", "2"]}]}
    (models / "models.json").write_text(json.dumps(manifest))
    return models


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


KINDS = ["tagger", "wine", "diabetes", "digits-onnx"]


def kinds_dir(root: Path, kinds: list[str] = KINDS) -> Path:
    """A model folder with the demo model of every kind beside the image classifiers: text
    (tagger), scikit-learn (wine), regression (diabetes), ONNX (digits-onnx)."""
    for name in kinds:
        shutil.copytree(ROOT / "files" / "models" / name / "1", root / name / "1")
    (root / "models.json").write_text(json.dumps({"models": [{"name": n, "versions": ["1"]} for n in kinds]}))
    return root


@pytest.fixture(scope="session")
def kinds(tmp_path_factory) -> Path:
    return kinds_dir(tmp_path_factory.mktemp("kinds") / "model")


@pytest.fixture(scope="session")
def kinds_server(tmp_path_factory, kinds) -> Iterator[str]:
    """A real uWSGI serving every kind's demo model."""
    yield from serve_uwsgi(tmp_path_factory, kinds)


def serve_uwsgi(tmp_path_factory, models_dir: Path, threads: int = 1, extra_env: dict | None = None) -> Iterator[str]:
    """Run uWSGI on a model folder until the generator is closed; yields its base URL."""
    port = free_port()
    metrics_dir = tmp_path_factory.mktemp("metrics")
    log = tmp_path_factory.mktemp("log") / "uwsgi.log"
    stats = log.with_name("stats.sock")  # as the uwsgi role's ini and app.env set it on hosts
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "FUNFLEET_MODEL_DIR": str(models_dir),
        "FUNFLEET_UWSGI_STATS": str(stats),
        **(extra_env or {}),
    }
    cmd = [*uwsgi_command(f"127.0.0.1:{port}", log), "--stats", str(stats)]
    cmd += ["--threads", str(threads), "--thunder-lock"] if threads > 1 else []
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        # readyz answers once one worker is up: wait until both have loaded the app.
        deadline = time.monotonic() + 60
        while log.read_text().count("WSGI app 0 (mountpoint='') ready") < 2 and time.monotonic() < deadline:
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
