"""The runtime's online mode: the host installed its venv from the package index itself."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
testinfra_hosts = ["funfleet-online-app1"]


def controller_index() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bootstrap" / "pip-index-settings")],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_the_active_venv_has_the_pinned_package_from_the_index(host):
    link = host.file("/opt/funfleet/venv")
    assert link.is_symlink
    assert link.linked_to.startswith("/opt/funfleet/venvs/")
    version = host.check_output("/opt/funfleet/venv/bin/python -c 'import six; print(six.__version__)'")
    assert version == "1.17.0"
    assert host.file("/opt/funfleet/venv/.funfleet-complete").exists


def test_no_wheelhouse_was_shipped(host):
    assert not host.file("/var/cache/funfleet/wheelhouse").exists


def test_the_index_ca_bundle_is_the_controllers(host):
    cert = controller_index()["cert"]
    pem = host.file("/usr/local/share/funfleet-index-ca.pem")
    if not cert:
        assert not pem.exists
        return
    assert pem.mode == 0o644
    assert pem.user == "root"
    assert pem.sha256sum == hashlib.sha256(Path(cert).read_bytes()).hexdigest()
