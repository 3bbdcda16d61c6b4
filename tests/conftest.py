"""Shared fixtures: the roles' resolve tasks run once against pretend hosts (tests/resolve/).
The helpers the tests share are role_helpers.py beside this file."""

from __future__ import annotations

import json

import pytest

from role_helpers import HOSTS, render


@pytest.fixture(scope="session")
def plans(tmp_path_factory) -> dict:
    """What the roles would install and write on each pretend host (forced OS and GPU facts)."""
    out = tmp_path_factory.mktemp("plans")
    render("tests/resolve/inventory.yml", "tests/resolve/resolve.yml", out)
    return {host: json.loads((out / f"{host}.json").read_text()) for host in HOSTS}
