"""The ufw role's SSH rules: UFW's `limit` (a source's 6th connection within 30 s is dropped)
where SSH is open to any address, `allow` from a named admin network, which a bastion shared by
operators, CI or AWX would otherwise trip as soon as SSH multiplexing is off (ufw_ssh_limit)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from role_helpers import ansible_playbook


def rules(tmp_path: Path, networks: list[str], limit: str | None = None) -> dict[str, str]:
    out = tmp_path / "rules.json"
    extra: dict = {"ufw_ssh_admin_networks": networks, "out": str(out), "ansible_python_interpreter": sys.executable}
    if limit is not None:
        extra["ufw_ssh_limit"] = limit
    result = ansible_playbook("-i", "localhost,", "tests/ufw_guard/rules.yml", "-e", json.dumps(extra))
    assert result.returncode == 0, result.stdout[-2000:]
    return {rule["from"]: rule["rule"] for rule in json.loads(out.read_text()) if rule["name"].startswith("ssh-")}


def test_by_default_only_ssh_open_to_any_address_is_rate_limited(tmp_path):
    assert rules(tmp_path, ["any", "10.20.0.0/16"]) == {"any": "limit", "10.20.0.0/16": "allow"}
    assert rules(tmp_path, ["0.0.0.0/0", "::/0"]) == {"0.0.0.0/0": "limit", "::/0": "limit"}


@pytest.mark.parametrize(("limit", "expected"), [("all", "limit"), ("none", "allow")])
def test_ufw_ssh_limit_all_or_none(tmp_path, limit, expected):
    assert rules(tmp_path, ["any", "10.20.0.0/16"], limit) == {"any": expected, "10.20.0.0/16": expected}
