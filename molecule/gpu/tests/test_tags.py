"""A GPU host stays a GPU host when a play runs only part of the stack: `site.yml --tags uwsgi`,
`site.yml --tags runtime` and a deploy.yml of its own all take the GPU count from the host's GPU
fact (playbooks/facts.yml runs it under every tag), never from a role that did not run.

Each run is limited to the GPU host and must change nothing there: its config and its venv are
already the GPU ones (converge.yml). Before the fleet plan, --tags uwsgi rewrote them for the CPU."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GPU = "funfleet-gpu-gpu1"
testinfra_hosts = [GPU]


def run(playbook: str, *extra: str) -> subprocess.CompletedProcess:
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    binary = shutil.which("ansible-playbook") or str(Path(sys.executable).with_name("ansible-playbook"))
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    cmd = [binary, "-i", str(inventory), str(ROOT / playbook), "-l", GPU, *extra]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def recap(result: subprocess.CompletedProcess) -> dict[str, int]:
    line = next(line for line in result.stdout.splitlines() if line.startswith(GPU) and "ok=" in line)
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def test_tags_uwsgi_keeps_the_gpu_unit_and_environment(host):
    result = run("site.yml", "--tags", "uwsgi", "-e", '{"uwsgi_start": false}')
    assert result.returncode == 0, result.stdout[-4000:]
    assert recap(result)["changed"] == 0, result.stdout[-4000:]
    env = host.file("/etc/funfleet/app.env").content_string.splitlines()
    assert "FUNFLEET_DEVICE=gpu" in env
    assert "FUNFLEET_GPU_COUNT=1" in env
    assert "PrivateDevices=no" in host.file("/etc/systemd/system/funfleet.service").content_string.splitlines()


def test_tags_runtime_keeps_the_gpu_venv(host):
    before = host.file("/opt/funfleet/venv").linked_to
    result = run("site.yml", "--tags", "runtime")
    assert result.returncode == 0, result.stdout[-4000:]
    assert recap(result)["changed"] == 0, result.stdout[-4000:]
    assert host.file("/opt/funfleet/venv").linked_to == before


def test_a_deploy_of_its_own_counts_the_gpu_workers(host):
    """The memory check of a standalone deploy.yml counts funfleet_workers_per_gpu per GPU: with
    1,000 a GPU no host has the memory, and the deploy stops there, before anything is shipped
    (with the CPU layout it would count one worker a core and go on)."""
    result = run("playbooks/deploy.yml", "-e", "funfleet_workers_per_gpu=1000")
    assert result.returncode != 0
    said = " ".join((result.stdout + result.stderr).split())  # the error goes to stderr, wrapped
    assert "1000 workers x" in said, said[-4000:]
    assert not host.file("/opt/funfleet/current").exists
