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


def ansible_playbook(*args: str, **env: str) -> subprocess.CompletedProcess:
    """ansible-playbook from this venv, in the repo, with the repo's roles and config (and any
    extra environment); the caller checks the result."""
    playbook = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run(
        [str(playbook), *args],
        cwd=ROOT,
        env={
            **os.environ,
            "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="session")
def plans(tmp_path_factory) -> dict:
    """What the roles would install and write on each pretend host (forced OS and GPU facts)."""
    out = tmp_path_factory.mktemp("plans")
    result = ansible_playbook(
        "-i",
        "tests/resolve/inventory.yml",
        "tests/resolve/resolve.yml",
        "-e",
        f"out={out}",
        ANSIBLE_LIBRARY=str(ROOT / "tests" / "resolve" / "library"),
        ANSIBLE_GATHERING="explicit",
        ANSIBLE_FACT_CACHING="memory",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return {host: json.loads((out / f"{host}.json").read_text()) for host in HOSTS}
