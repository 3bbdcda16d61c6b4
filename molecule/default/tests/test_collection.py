"""The collection used from another repository: an empty folder gets an inventory (the
scenario's: its settings, and the host over SSH as the operator's sudo user) and the built
artifact installed with ansible-galaxy; then the
collection's playbooks run by their full names (site, rollback, drain) and a play of the
folder's own uses a role and a filter by theirs. Nothing of this checkout's Ansible content is
on the path (no ansible.cfg, no ANSIBLE_* setting, no roles path); the models come from its
files/models, as an operator's come from their own repository.

Runs first (file order) against the host converge provisioned from the same artifact, so every
playbook finds it as they left it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleetcheck import ROOT, sh

HOST = "funfleet-default-app1"
testinfra_hosts = [HOST]
BIN = Path(sys.executable).parent


def recap(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith(HOST) and "ok=" in line)
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    """The operator's folder: an inventory, the installed collection, and a way to run a play."""
    folder = tmp_path_factory.mktemp("their-repo")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", ROOT, "--output-path", build], check=True, capture_output=True
    )
    (artifact,) = build.glob("funfleet-fleet-*.tar.gz")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env |= {"ANSIBLE_COLLECTIONS_PATH": str(folder / "collections"), "ANSIBLE_NOCOLOR": "1"}
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "install", artifact, "-p", "collections", "--offline", "--force"],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
    )
    scenario = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent  # the settings, the SSH details
    for kind, name in (("group_vars", "all"), ("host_vars", HOST)):
        (folder / kind).mkdir()
        shutil.copy(scenario / kind / name, folder / kind / f"{name}.yml")
    inventory = {"all": {"children": {"app": {"hosts": {HOST: None}}}}}
    (folder / "hosts.yml").write_text(yaml.safe_dump(inventory))
    assert sorted(p.name for p in folder.iterdir()) == ["collections", "group_vars", "host_vars", "hosts.yml"]
    assert (
        yaml.safe_load((folder / "host_vars" / f"{HOST}.yml").read_text())["ansible_connection"]
        == "ansible.builtin.ssh"
    )

    def run(playbook: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [BIN / "ansible-playbook", "-i", "hosts.yml", playbook, *extra],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    run.folder = folder
    return run


def test_site_from_the_installed_collection_changes_nothing_on_the_host(theirs):
    """The host runs what converge gave it from the same artifact, so the whole site run (every
    play, over SSH with become, without pipelining: no ansible.cfg here) changes nothing."""
    result = theirs("funfleet.fleet.site")
    assert result.returncode == 0, result.stdout + result.stderr
    counts = recap(result.stdout)
    assert counts["failed"] == counts["unreachable"] == counts["changed"] == 0, result.stdout
    assert counts["ok"] > 100, counts  # the plays ran, not skipped


def test_rollback_from_the_installed_collection(theirs):
    """A rollback to the release the host runs: the whole play (lock, choice, serving check),
    nothing to switch."""
    current = Path(sh(HOST, "readlink", "-f", "/opt/funfleet/current").stdout.strip()).name
    result = theirs("funfleet.fleet.rollback", "-e", f"app_release_rollback_to={current}")
    assert result.returncode == 0, result.stdout + result.stderr
    counts = recap(result.stdout)
    assert counts["changed"] == counts["failed"] == 0, result.stdout
    assert counts["ok"] > 30, counts  # lock, plan, choice, serving check: the plays ran
    assert Path(sh(HOST, "readlink", "-f", "/opt/funfleet/current").stdout.strip()).name == current


def test_their_own_play_uses_a_role_and_a_filter_by_full_name(theirs):
    (theirs.folder / "theirs.yml").write_text(
        """---
- name: Gather facts, as every play of the collection starts
  ansible.builtin.import_playbook: funfleet.fleet.facts

- name: Their own play
  hosts: app
  become: true
  gather_facts: false
  tasks:
    - name: Read the host's drain state with the nginx role's entry point
      ansible.builtin.import_role:
        name: funfleet.fleet.nginx
        tasks_from: state
      vars:
        nginx_drain_file: /var/lib/funfleet/drained  # a required parameter: the caller's to give

    - name: Show what the plan says, the role read and the filter makes of no drain file
      ansible.builtin.debug:
        msg: >-
          kinds={{ funfleet_plan.kinds | join(',') }} drained={{ nginx_drain_state.drained }}
          none={{ ([] | funfleet.fleet.nginx_drain_state).drained }}
"""
    )
    result = theirs("theirs.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kinds=app drained=False none=False" in " ".join(result.stdout.split()), result.stdout


def test_drain_from_the_installed_collection_refuses_to_leave_no_host(theirs):
    """Last: the refused run leaves its lock, as any failed run does; the next run from this
    controller takes it over."""
    result = theirs("funfleet.fleet.drain", "-e", 'funfleet_drain_reason="a test"')
    assert result.returncode != 0
    said = " ".join((result.stdout + result.stderr).split())
    assert "would leave 1 of 1 app hosts out of rotation" in said, said
    assert "no app host serving" in said, said
    assert sh(HOST, "test", "-e", "/var/lib/funfleet/drained", check=False).returncode != 0
