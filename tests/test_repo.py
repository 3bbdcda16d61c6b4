"""Repository invariants: role docs match their argument specs, every role variable carries its
role's prefix, and each role has the layout every role here has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())


def test_role_readmes_match_argument_specs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "role_docs.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_layout_and_prefixes(role):
    for part in ("defaults/main.yml", "meta/argument_specs.yml", "meta/main.yml", "handlers/main.yml", "README.md"):
        assert (role / part).is_file(), part
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert all(name.startswith(role.name + "_") for name in defaults), role.name
    assert all(name.startswith(role.name + "_") for name in specs), role.name
    # Every default is specified; an option with no default is one the play must pass (the
    # fleet settings wire those, playbooks/vars/fleet.yml).
    assert set(defaults) <= set(specs)
    for name in set(specs) - set(defaults):
        assert specs[name].get("required") is True, f"{role.name}: {name} has no default and is not required"
    for vars_file in (role / "vars").glob("*.yml"):
        names = yaml.safe_load(vars_file.read_text()) or {}
        assert all(name.startswith(role.name + "_") for name in names), vars_file


def test_no_registry_host_is_named_in_tracked_files():
    hosts = set()
    for sources in Path("/etc/apt/sources.list.d").glob("*.sources"):
        for line in sources.read_text().splitlines():
            if line.strip().startswith("URIs:"):
                hosts.update(u.split("/")[2] for u in line.split()[1:] if "://" in u)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        path = ROOT / name
        if path.suffix in (".keras", ".png") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        assert not [h for h in hosts if h in text], name
