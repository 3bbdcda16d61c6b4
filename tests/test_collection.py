"""The repository as the collection funfleet.fleet: what the built artifact holds and leaves out,
its metadata against the repository's own, and every filter called by its full name. (The
artifact's sanity is `make collection`; its playbooks run from an empty folder in the default
scenario, molecule/default/tests/test_collection.py.)"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
PLUGINS = sorted((ROOT / "plugins" / "filter").glob("*.py"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("build")
    galaxy = Path(sys.executable).with_name("ansible-galaxy")
    subprocess.run([galaxy, "collection", "build", ROOT, "--output-path", out], check=True, capture_output=True)
    (built,) = out.glob("*.tar.gz")
    assert built.name == f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"
    with tarfile.open(built) as tar:
        return {member.name for member in tar.getmembers() if member.isfile()}


def filter_names() -> dict[str, str]:
    """Each filter the plugins define, with its file."""
    names = {}
    for plugin in PLUGINS:
        tree = ast.parse(plugin.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "filters":
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Dict):
                        names |= {key.value: plugin.name for key in ret.keys if isinstance(key, ast.Constant)}
    return names


def tracked(*prefixes: str) -> set[str]:
    out = subprocess.run(["git", "ls-files", "-z", *prefixes], cwd=ROOT, check=True, capture_output=True, text=True)
    return {name for name in out.stdout.split("\0") if name}


def test_the_artifact_holds_what_the_roles_and_plays_need(artifact):
    """Every tracked file of the roles, playbooks and filters, the app the app_release role packs
    (wsgi.py, inference/) and the requirements python_runtime builds wheels from."""
    needed = tracked("roles", "playbooks", "plugins", "app/inference", "app/wsgi.py", "app/requirements.txt")
    needed |= tracked("app/requirements-gpu.txt", "files/models/digits", "meta")
    assert len(needed) > 100
    assert needed - artifact == set()
    assert {"README.md", "CHANGELOG.md", "tests/sanity/ignore-2.19.txt"} <= artifact


def test_the_artifact_leaves_out_tests_ci_caches_and_the_other_demo_models(artifact):
    leaked = [
        name
        for name in artifact
        if name.startswith(("app/tests/", "molecule/", ".cache/", ".venv/", "collections/", "inventory/", "bench/"))
        or re.match(r"tests/(test_|conftest|role_helpers|wiring/|fixtures/)", name)
        or (name.startswith("files/models/") and not name.startswith("files/models/digits/"))
        or name.startswith("files/samples/")
        or "__pycache__" in name
        or name.endswith(".pyc")
    ]
    assert leaked == []


def test_the_collection_and_the_app_share_one_version():
    init = (ROOT / "app" / "inference" / "__init__.py").read_text()
    assert f'__version__ = "{GALAXY["version"]}"' in init


def test_requires_ansible_is_the_pinned_core():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    pinned = re.search(r"^ansible-core==(\d+)\.(\d+)\.", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert runtime["requires_ansible"] == f">={pinned[1]}.{pinned[2]}.0"
    assert (ROOT / "tests" / "sanity" / f"ignore-{pinned[1]}.{pinned[2]}.txt").is_file()


def test_the_sanity_ignores_each_give_a_reason():
    for line in (ROOT / "tests" / "sanity").glob("ignore-*.txt"):
        for entry in line.read_text().splitlines():
            path, _sep, reason = entry.partition(" # ")
            assert reason.strip(), entry
            assert (ROOT / path.split()[0]).exists(), entry


def test_every_filter_is_called_by_its_full_name():
    """A filter called by its short name works from this checkout only while roles carry their
    own filter_plugins (which they no longer do): every call names funfleet.fleet, in the roles,
    the plays, the scenarios and the controller tests' plays."""
    names = filter_names()
    assert len(names) >= 10
    alternatives = "|".join(map(re.escape, names))
    # `| name`, across a line break too, and map('name') / map("name") and the like.
    short = re.compile(rf"(\|\s*|(?<!attr)\(\s*['\"])({alternatives})\b")  # not selectattr('name')
    texts = [
        path
        for pattern in ("roles/**/*.yml", "roles/**/*.j2", "playbooks/**/*.yml", "molecule/**/*.yml", "tests/**/*.yml")
        for path in ROOT.glob(pattern)
    ] + [ROOT / "site.yml"]
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)!r}" for path in texts for match in short.finditer(path.read_text())
    ]
    assert found == []
    used = "\n".join(path.read_text() for path in texts)
    for name in names:
        assert f"funfleet.fleet.{name}" in used, name
    assert not list(ROOT.glob("roles/*/filter_plugins"))
