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


def ansible(*args: str) -> subprocess.CompletedProcess:
    """An ad-hoc command through the scenario's inventory: Ansible's own SSH connection, as ops."""
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    argv = [str(Path(sys.executable).with_name("ansible")), "-i", str(INVENTORY), HOST, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)


def remote(command: str, *extra: str) -> str:
    result = ansible("-m", "ansible.builtin.shell", "-a", command, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split(">>\n", 1)[1].strip()


def test_ansible_reaches_the_host_as_an_unprivileged_user_that_becomes_root():
    assert remote("id -un") == "ops"
    assert remote("id -un", "--become") == "root"
    connection = remote('echo "$SSH_CONNECTION"')
    controller = ipaddress.ip_address(connection.split()[0])
    assert any(controller in ipaddress.ip_network(net) for net in admin_networks()), connection


def test_an_unknown_host_key_is_refused(tmp_path):
    """Host keys are checked: the known_hosts made from the host's own key is what lets every run
    in. With an empty one (and no shared connection to ride on), Ansible cannot reach the host."""
    empty = tmp_path / "known_hosts"
    empty.touch()
    args = f"-o ControlPath=none -o UserKnownHostsFile={empty}"
    result = ansible("-m", "ansible.builtin.ping", "-e", f"ansible_ssh_common_args='{args}'")
    assert result.returncode != 0
    assert "Host key verification failed" in result.stdout + result.stderr, result.stdout + result.stderr


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
    seen = remote('echo "$SSH_CONNECTION"').split()[0]
    refused = guard(tmp_path, "-e", '{"ufw_ssh_admin_networks": ["10.99.0.0/16"]}')
    assert refused.returncode != 0
    said = " ".join((refused.stdout + refused.stderr).split())  # the callback folds long messages
    assert f"the controller reaches it from {seen}, outside ufw_ssh_admin_networks (10.99.0.0/16)" in said, said
