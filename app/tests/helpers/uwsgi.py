"""A real uWSGI with the options every app host runs (the uwsgi role's base.ini)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .paths import APP_DIR, BASE_INI


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
