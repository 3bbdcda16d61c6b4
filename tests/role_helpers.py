"""What the Ansible-side tests share besides fixtures (those stay in conftest.py): the
repository, the pretend hosts of tests/resolve/, and ansible-playbook as the repo runs it.

Importable as ``role_helpers`` (the root pyproject's pytest ``pythonpath`` has tests/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def render(inventory: str | Path, playbook: str, out: Path, *extra: str) -> None:
    """Run one of the tests' render playbooks locally on pretend hosts: the test-only
    funfleet_fake_facts module (tests/resolve/library/) gives them facts, none is gathered, and
    the playbook writes what the roles would under ``out``."""
    result = ansible_playbook(
        "-i",
        str(inventory),
        playbook,
        "-e",
        f"out={out}",
        *extra,
        ANSIBLE_LIBRARY=str(ROOT / "tests" / "resolve" / "library"),
        ANSIBLE_GATHERING="explicit",
        ANSIBLE_FACT_CACHING="memory",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
