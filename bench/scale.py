#!/usr/bin/env python3
"""How the fleet's costs grow with its size: a table of fleets of N app hosts behind one
balancer, each reached as an operator reaches theirs (SSH as an unprivileged user with sudo,
through become, with this checkout's ansible.cfg).

For each size it creates the test hosts (Docker containers with systemd, sshd and the user made
by molecule/default/prepare.yml), then measures on the controller:

- a fresh ``site.yml`` (nothing installed yet);
- a no-op re-run of ``site.yml`` (it must report changed=0);
- a rolling deploy of a new release (``playbooks/deploy.yml``: iris's two latest versions
  instead of its latest);

each with its wall time, the time per app host, and the bytes the controller sent to the
fleet: an iptables counter on the OUTPUT chain for the fleet network's bridge, so packets the
controller itself sends (SSH, its file transfers), never the packets it routes for the hosts
(their apt downloads). The hosts serve iris alone (scikit-learn, the lightest model kind), one
worker each, so that 8 of them fit on a small machine.

    bench/scale.py 2 4 8            # sizes (default 2 4 8); about an hour on 2 cores
    bench/scale.py --keep 2         # leave the last fleet up (remove it: bench/scale.py --down)
    bench/scale.py --settings 4     # also no-op re-runs with each Ansible setting changed (SETTINGS)
    bench/scale.py --logs /tmp/s 8  # keep each run's output (with its 20 slowest tasks) in /tmp/s/8/

Everything it makes (containers funfleet-scale-*, the network, the iptables rule, the cached
facts of its hosts, a temporary folder) is removed at the end, also on Ctrl-C. It sends traffic
only to its own containers. Run nothing else heavy beside it: the timings are the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NETWORK = "funfleet-scale"
PREFIX = "funfleet-scale"
COMMENT = "funfleet-scale-controller-bytes"
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
IRIS = {"name": "iris", "base_path": "iris", "allow_pickle": True}
LATEST_TWO = {**IRIS, "version_policy": {"latest": 2}}
# What --settings measures against this checkout's ansible.cfg (forks 20, pipelining, facts cached
# in .cache/facts, Ansible's default SSH arguments: compression and ControlPersist=60s), one at a
# time, each on a no-op re-run.
SSH_DEFAULT = "-C -o ControlMaster=auto -o ControlPersist=60s"
SETTINGS = {
    "forks 5": {"ANSIBLE_FORKS": "5"},
    "no ControlPersist": {"ANSIBLE_SSH_ARGS": "-C -o ControlMaster=no"},
    "no SSH compression": {"ANSIBLE_SSH_ARGS": SSH_DEFAULT.replace("-C ", "")},
    "no pipelining": {"ANSIBLE_PIPELINING": "false"},
    "facts not cached": {"ANSIBLE_CACHE_PLUGIN": "memory"},
}


def run(argv: list[str], env: dict | None = None, log: Path | None = None, check: bool = True) -> str:
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if check and done.returncode != 0:
        sys.exit(f"{' '.join(argv[:3])} ... failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def platforms(n: int) -> list[dict]:
    hosts = [{"name": f"{PREFIX}-lb", "groups": ["lb"]}]
    hosts += [{"name": f"{PREFIX}-app{i}", "groups": ["app"]} for i in range(1, n + 1)]
    return [{**h, "networks": [{"name": NETWORK}]} for h in hosts]


class Fleet:
    def __init__(self, n: int, work: Path) -> None:
        self.n, self.work = n, work
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "MOLECULE_EPHEMERAL_DIRECTORY": str(work),
            "MOLECULE_PROJECT_DIRECTORY": str(ROOT),
            "ANSIBLE_COLLECTIONS_PATH": f"{ROOT}/collections",
            # Each run's 20 slowest tasks at the end of its output (--logs keeps it).
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
        }
        self.config = work / "molecule.json"
        self.config.write_text(
            json.dumps({"molecule_yml": {"platforms": platforms(n)}, "molecule_instance_config": str(work / "i.yml")})
        )
        self.inventory = work / "hosts.yml"
        # iris 1 and a version 2 cut from it: the hosts get 1, the rolling deploy 1 and 2.
        self.models = work / "models"
        for version in ("1", "2"):
            cut = [sys.executable, "-m", "inference.release_tools", "cut", str(ROOT / "files/models/iris/1"), version]
            run([*cut, "--out", str(self.models / "iris" / version)], {**self.env, "PYTHONPATH": str(ROOT / "app")})

    def playbook(self, name: str, *extra: str, log: str | None = None, env: dict | None = None) -> str:
        argv = [str(BIN / "ansible-playbook"), "-i", str(self.inventory), str(ROOT / name), *extra]
        return run(argv, {**self.env, **(env or {})}, self.work / log if log else None)

    def create(self) -> None:
        self.inventory.write_text("all: {}\n")
        self.playbook("molecule/shared/create.yml", "-e", f"@{self.config}", log="create.log")
        addresses = {
            h["name"]: run(
                [
                    "docker",
                    "inspect",
                    "-f",
                    f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}',
                    h["name"],
                ]
            ).strip()
            for h in platforms(self.n)
        }
        ssh = self.work / "ssh"
        inventory = {
            "all": {
                "vars": {
                    "python_runtime_install_mode": "wheelhouse",
                    "uwsgi_processes": 1,
                    "app_release_models": [IRIS],
                    "app_release_models_dir": str(self.models),
                    "app_release_ledger": str(self.work / "released-models.json"),
                    "ufw_ssh_admin_networks": ["172.16.0.0/12", "192.168.0.0/16"],
                    "ansible_connection": "ansible.builtin.ssh",
                    "ansible_user": "ops",
                    "ansible_port": 22,
                    "ansible_ssh_private_key_file": str(ssh / "id_ed25519"),
                    "ansible_ssh_common_args": f"-o UserKnownHostsFile={ssh}/known_hosts",
                },
                "children": {
                    group: {
                        "hosts": {
                            h["name"]: {"ansible_host": addresses[h["name"]]}
                            for h in platforms(self.n)
                            if group in h["groups"]
                        }
                    }
                    for group in ("lb", "app")
                },
            }
        }
        self.inventory.write_text(json.dumps(inventory, indent=1))
        self.playbook("molecule/default/prepare.yml", log="prepare.log")

    def destroy(self) -> None:
        run(
            [
                str(BIN / "ansible-playbook"),
                "-c",
                "local",
                "-i",
                "localhost,",
                str(ROOT / "molecule/shared/destroy.yml"),
                "-e",
                f"@{self.config}",
                "-e",
                f"ansible_python_interpreter={sys.executable}",
            ],
            self.env,
        )
        for cached in (ROOT / ".cache" / "facts").glob(f"*{PREFIX}-*"):  # the fact cache's files of its hosts
            cached.unlink(missing_ok=True)


def bridge() -> str:
    return "br-" + run(["docker", "network", "inspect", "-f", "{{.Id}}", NETWORK]).strip()[:12]


def counter_rule(action: str, device: str) -> None:
    run(["iptables", "-w", action, "OUTPUT", "-o", device, "-m", "comment", "--comment", COMMENT], check=action == "-I")


def remove_counter_rules() -> None:
    """Every counter rule of this script, also one a killed run left behind."""
    for line in run(["iptables", "-w", "-S", "OUTPUT"]).splitlines():
        if COMMENT in line:
            run(["iptables", "-w", "-D", *line.split()[1:]], check=False)


def sent_bytes() -> int:
    for line in run(["iptables", "-w", "-nvxL", "OUTPUT"]).splitlines():
        if COMMENT in line:
            return int(line.split()[1])
    raise RuntimeError("the byte counter's iptables rule is gone")


def measure(fleet: Fleet, what: str, name: str, *extra: str, env: dict | None = None) -> dict:
    before, started = sent_bytes(), time.monotonic()
    out = fleet.playbook(name, *extra, log=f"{what}-{fleet.n}.log".replace(" ", "-"), env=env)
    seconds, sent = time.monotonic() - started, sent_bytes() - before
    recap = RECAP.findall(out)
    changed = sum(int(c) for _h, _ok, c, _u, _f in recap)
    return {"what": what, "hosts": fleet.n, "seconds": seconds, "mb": sent / 1e6, "changed": changed}


def one_size(n: int, keep: bool, settings: bool, logs: Path | None) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"funfleet-scale-{n}-"))
    fleet = Fleet(n, work)
    device = None
    try:
        fleet.destroy()
        print(f"== {n} app hosts: creating them (sshd, a user with sudo) ==", flush=True)
        try:
            fleet.create()
        except SystemExit as failed:  # many systemd hosts booting at once on 2 cores: once more
            print(f"   creating them failed, once more: {str(failed.code)[-300:]}", flush=True)
            fleet.destroy()
            fleet.create()
        device = bridge()
        counter_rule("-I", device)
        rows = [measure(fleet, "fresh site.yml", "site.yml")]
        rows.append(measure(fleet, "no-op site.yml", "site.yml"))
        for name, env in SETTINGS.items() if settings else ():
            rows.append(measure(fleet, f"no-op, {name}", "site.yml", env=env))
        two = json.dumps({"app_release_models": [LATEST_TWO], "funfleet_canary": False})
        rows.append(measure(fleet, "rolling deploy", "playbooks/deploy.yml", "-e", two))
        if not rows[-1]["changed"]:
            sys.exit("the rolling deploy changed nothing: it measured no rollout")
        for row in rows:
            print(
                f"   {row['what']:<16} {row['seconds']:7.1f} s  {row['mb']:8.1f} MB  changed={row['changed']}",
                flush=True,
            )
        return rows
    finally:
        if device:
            remove_counter_rules()
        if logs is not None:
            (logs / str(n)).mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copy(log, logs / str(n) / log.name)
        if not keep:
            fleet.destroy()
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"   left up; its logs and inventory are in {work}")


def table(rows: list[dict]) -> str:
    lines = [
        "| app hosts | what | s | s per app host | controller MB | MB per app host | changed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['hosts']} | {r['what']} | {r['seconds']:.0f} | {r['seconds'] / r['hosts']:.1f} | "
            f"{r['mb']:.1f} | {r['mb'] / r['hosts']:.1f} | {r['changed']} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> str:
    """Each measure's per-host cost at each size over its per-host cost at the smallest size."""
    out = []
    for what in dict.fromkeys(r["what"] for r in rows):
        mine = [r for r in rows if r["what"] == what]
        base = mine[0]
        parts = [
            f"{r['hosts']} hosts: time {r['seconds'] / r['hosts'] / (base['seconds'] / base['hosts']):.2f}, "
            f"bytes {r['mb'] / r['hosts'] / max(base['mb'] / base['hosts'], 1e-9):.2f}"
            for r in mine[1:]
        ]
        out.append(f"{what}, per host against {base['hosts']} hosts: " + ("; ".join(parts) or "one size only"))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[2, 4, 8])
    parser.add_argument("--keep", action="store_true", help="leave the last fleet up")
    parser.add_argument("--down", action="store_true", help="remove a fleet left up, then exit")
    parser.add_argument("--settings", action="store_true", help="also measure each of SETTINGS at the last size")
    parser.add_argument("--logs", type=Path, help="keep each run's output in LOGS/<size>/")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/scale.py counts the controller's bytes with iptables: run it as root")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) when killed too
    if args.down:
        remove_counter_rules()
        work = Path(tempfile.mkdtemp(prefix="funfleet-scale-down-"))
        try:
            Fleet(16, work).destroy()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if any(n < 1 or n > 16 for n in args.sizes):
        sys.exit("sizes from 1 to 16 app hosts")
    rows: list[dict] = []
    for i, n in enumerate(args.sizes):
        last = i == len(args.sizes) - 1
        rows += one_size(n, keep=args.keep and last, settings=args.settings and last, logs=args.logs)
    print()
    print(table(rows))
    print()
    print(ratios(rows))
    bad = [r for r in rows if r["what"].startswith("no-op") and r["changed"]]
    if bad:
        sys.exit(f"a no-op re-run changed something: {bad}")


if __name__ == "__main__":
    main()
