"""Shared fixtures: the roles' resolve tasks run once against pretend hosts (tests/resolve/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ["debian12-cpu", "debian12-gpu", "ubuntu22-cpu", "ubuntu22-gpu", "ubuntu24-cpu", "ubuntu24-gpu"]


@pytest.fixture(scope="session")
def plans(tmp_path_factory) -> dict:
    """What the roles would install and write on each pretend host (forced OS and GPU facts)."""
    out = tmp_path_factory.mktemp("plans")
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_LIBRARY": str(ROOT / "tests" / "resolve" / "library"),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_FACT_CACHING": "memory",
    }
    playbook = Path(sys.executable).with_name("ansible-playbook")
    result = subprocess.run(
        [str(playbook), "-i", "tests/resolve/inventory.yml", "tests/resolve/resolve.yml", "-e", f"out={out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return {host: json.loads((out / f"{host}.json").read_text()) for host in HOSTS}
