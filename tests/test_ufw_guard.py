"""The ufw role refuses to enable the firewall when the controller's own address (as the host
sees it) is outside ufw_ssh_admin_networks, and lets it through when inside."""

from __future__ import annotations

import json
import subprocess

import pytest

from role_helpers import ansible_playbook


def guard(address: str, networks: list[str]) -> subprocess.CompletedProcess:
    extra = {"ufw_controller_address": address, "ufw_ssh_admin_networks": networks}
    return ansible_playbook("-i", "localhost,", "tests/ufw_guard/guard.yml", "-e", json.dumps(extra))


@pytest.mark.parametrize(
    ("address", "networks"),
    [
        ("203.0.113.7", ["10.0.0.0/8"]),
        ("203.0.113.7", ["203.0.113.8", "198.51.100.0/24"]),
        ("2001:db8::7", ["2001:db8:1::/48"]),
    ],
)
def test_refuses_a_controller_outside_the_admin_networks(address, networks):
    result = guard(address, networks)
    assert result.returncode == 2, result.stdout[-2000:]
    assert f"the controller reaches it from {address}, outside ufw_ssh_admin_networks" in result.stdout


def test_refuses_empty_admin_networks():
    result = guard("203.0.113.7", [])
    assert result.returncode == 2
    assert "ufw_ssh_admin_networks is empty" in result.stdout


@pytest.mark.parametrize(
    ("address", "networks"),
    [
        ("203.0.113.7", ["10.0.0.0/8", "203.0.113.0/24"]),
        ("203.0.113.7", ["203.0.113.7"]),
        ("2001:db8::7", ["2001:db8::/32"]),
        ("203.0.113.7", ["any"]),
    ],
)
def test_lets_a_controller_inside_through(address, networks):
    result = guard(address, networks)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "TASK [ufw : Refuse a run over SSH that would close SSH]" in result.stdout  # it ran, and passed
    assert "ok=2 " in result.stdout
    assert "failed=0" in result.stdout
