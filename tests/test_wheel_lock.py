"""The wheelhouse's sha256 lock (roles/python_runtime/files/funfleet-wheel-lock) and what a host
does with it: pip, in hash-checking mode, installs the wheels the lock names from an HTTP folder
(the fleet's artifact source, here one served on 127.0.0.1) and refuses a wheel whose bytes changed."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "roles" / "python_runtime" / "files" / "funfleet-wheel-lock"


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (PEP 427): one module, METADATA, WHEEL and RECORD."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: funfleet-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A wheel folder served over HTTP on 127.0.0.1, with directory listings (as nginx's autoindex)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def write_lock(folder: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LOCK), str(folder), str(out)], check=False, capture_output=True, text=True
    )


def pip_install(lock: Path, url: str, target: Path) -> subprocess.CompletedProcess:
    """The install python_runtime's venv.yml runs on a host fetching from the artifact source."""
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir"]
    argv += ["--require-hashes", "--requirement", str(lock), "--no-index", "--find-links", url]
    argv += ["--trusted-host", url.split("/")[2], "--target", str(target)]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)


def test_the_lock_names_every_wheel_with_its_sha256(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    b = make_wheel(folder, "beta_pkg", "2.0.1")
    a = make_wheel(folder, "alpha", "1.0")
    (folder / ".complete").touch()  # the controller's marker is not a wheel
    assert write_lock(folder, tmp_path / "lock.txt").returncode == 0
    assert (tmp_path / "lock.txt").read_text().splitlines() == [
        f"alpha==1.0 --hash=sha256:{hashlib.sha256(a.read_bytes()).hexdigest()}",
        f"beta_pkg==2.0.1 --hash=sha256:{hashlib.sha256(b.read_bytes()).hexdigest()}",
    ]


def test_an_empty_wheelhouse_has_no_lock(tmp_path: Path) -> None:
    result = write_lock(tmp_path, tmp_path / "lock.txt")
    assert result.returncode == 1
    assert "no wheels in" in result.stderr
    assert not (tmp_path / "lock.txt").exists()


def test_a_host_installs_the_locked_wheels_over_http(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, url = served
    make_wheel(folder, "funfleet_probe", "1.0")
    make_wheel(folder, "funfleet_other", "3.2")
    write_lock(folder, tmp_path / "lock.txt")
    result = pip_install(tmp_path / "lock.txt", url, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "funfleet_probe.py").read_text() == "VERSION = '1.0'\n"
    assert (tmp_path / "site" / "funfleet_other.py").exists()


def test_a_wheel_changed_on_the_source_is_refused(served: tuple[Path, str], tmp_path: Path) -> None:
    """A corrupt or tampered copy on the artifact source: pip refuses it, installs nothing, fails."""
    folder, url = served
    wheel = make_wheel(folder, "funfleet_probe", "1.0")
    write_lock(folder, tmp_path / "lock.txt")
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    result = pip_install(tmp_path / "lock.txt", url, tmp_path / "site")
    assert result.returncode == 1
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in result.stderr
    assert not (tmp_path / "site" / "funfleet_probe.py").exists()
