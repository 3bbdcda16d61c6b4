"""The transport: the scenario reaches its host as an operator reaches theirs, over SSH as an
unprivileged user (ops) with passwordless sudo, through become, with a key and a known_hosts
entry made at test time (prepare.yml). Converge, idempotence, the verifier's playbooks and
testinfra all went that way; here, what the host sees of it, and the ufw guard reading the real
controller address from the SSH session."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import yaml

from fleetcheck import ROOT

HOST = "funfleet-default-app1"
testinfra_hosts = [HOST]
INVENTORY = Path(os.environ.get("MOLECULE_INVENTORY_FILE", "/nonexistent")).parent


def host_vars() -> dict:
    return yaml.safe_load((INVENTORY / "host_vars" / HOST).read_text())


def admin_networks() -> list[str]:
    return yaml.safe_load((INVENTORY / "group_vars" / "all").read_text())["ufw_ssh_admin_networks"]


def ssh(command: str) -> subprocess.CompletedProcess:
    hv = host_vars()
    argv = ["ssh", "-p", str(hv["ansible_port"]), "-i", hv["ansible_ssh_private_key_file"]]
    argv += [
        *hv["ansible_ssh_common_args"].split(),
        "-o",
        "BatchMode=yes",
        f"{hv['ansible_user']}@{hv['ansible_host']}",
    ]
    return subprocess.run([*argv, command], capture_output=True, text=True, timeout=60, check=False)


def test_the_host_is_reached_as_an_unprivileged_user_with_sudo():
    result = ssh('id -un; sudo -n id -un; echo "$SSH_CONNECTION"')
    assert result.returncode == 0, result.stderr
    user, root, connection = result.stdout.splitlines()
    assert (user, root) == ("ops", "root")
    controller = ipaddress.ip_address(connection.split()[0])
    assert any(controller in ipaddress.ip_network(net) for net in admin_networks()), connection


def test_an_unknown_host_key_is_refused(tmp_path):
    """Host keys are checked: the scenario's known_hosts is what lets the runs in."""
    hv = host_vars()
    empty = tmp_path / "known_hosts"
    empty.touch()
    argv = ["ssh", "-p", str(hv["ansible_port"]), "-i", hv["ansible_ssh_private_key_file"], "-o", "BatchMode=yes"]
    argv += [
        "-o",
        f"UserKnownHostsFile={empty}",
        "-o",
        "StrictHostKeyChecking=yes",
        f"ops@{hv['ansible_host']}",
        "true",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "Host key verification failed" in result.stderr


def guard(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """The ufw role's guard alone, over the scenario's SSH, from this checkout's collection."""
    play = tmp_path / "guard.yml"
    play.write_text(
        "- name: The ufw guard\n  hosts: app\n  gather_facts: false\n  become: true\n  tasks:\n"
        "    - name: Check\n      ansible.builtin.include_role:\n        name: funfleet.fleet.ufw\n"
        "        tasks_from: guard\n"
    )
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    argv = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(INVENTORY), str(play), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)


def test_the_ufw_guard_reads_the_controller_address_from_the_ssh_session(tmp_path):
    """With the scenario's networks the guard passes; with a network that does not hold the
    controller's real address (as sshd sees it) it refuses, naming that address."""
    assert guard(tmp_path).returncode == 0
    seen = ssh('echo "$SSH_CONNECTION"').stdout.split()[0]
    refused = guard(tmp_path, "-e", '{"ufw_ssh_admin_networks": ["10.99.0.0/16"]}')
    assert refused.returncode != 0
    said = " ".join((refused.stdout + refused.stderr).split())  # the callback folds long messages
    assert f"the controller reaches it from {seen}, outside ufw_ssh_admin_networks (10.99.0.0/16)" in said, said
