"""The fleet's operation lock, seen from the controller.

``'deploy' | funfleet_lock_holder`` answers who this run is: the controller's host name, the user,
the pid of the ``ansible-playbook`` process (found up the process tree of the worker that renders
the filter) and that process's start time, so a pid reused by another program is not taken for
the run. ``record | funfleet_lock_state(me)`` says what a lock record found on the lock host means:

- ``free``: no lock;
- ``ours``: this run holds it (site.yml takes it, then deploy.yml takes it again);
- ``stale``: taken by a run on this same controller (host name, machine id and pid namespace)
  whose process is gone (a failed, interrupted or killed run): the next run takes it over and
  says so. A controller that cannot see the process (``/proc`` mounted with ``hidepid``) must
  break the lock by hand;
- ``held``: another live run, or a run on another controller, which this one cannot check:
  only ``-e funfleet_lock_break=true`` takes it.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' when it is gone or unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _is_playbook(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(arg.decode(errors="replace")).startswith("ansible-playbook") for arg in argv[:2])


def _parent(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "0"))


def _playbook_pid() -> int:
    """The ansible-playbook process this filter runs under: the highest of the ancestors that run
    ansible-playbook (its workers are forks of it, with the same command line), else the parent."""
    found, pid = 0, os.getpid()
    for _level in range(16):
        if pid <= 1:
            break
        if _is_playbook(pid):
            found = pid
        elif found:
            break
        pid = _parent(pid)
    return found or os.getppid()


def _machine() -> str:
    """This controller's machine and pid namespace: two controllers with the same host name (CI
    runners, containers) are not taken for one, and a pid is only checked where it means something."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()[:12]
    except OSError:
        machine = "?"
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = "?"
    return f"{machine}:{pidns}"


def funfleet_lock_holder(operation: str) -> dict[str, Any]:
    pid = _playbook_pid()
    controller = socket.gethostname()
    start = _start_time(pid)
    return {
        "run": f"{controller}:{pid}:{start}",
        "operation": str(operation),
        "user": getpass.getuser(),
        "controller": controller,
        "machine": _machine(),
        "pid": pid,
        "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def funfleet_lock_record(text: str) -> dict[str, Any]:
    """The lock file's text as a record ({} for none; a record that is not JSON names nobody)."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {"run": "?", "operation": "?", "user": "?", "controller": "?", "pid": 0, "since": "?"}
    return record if isinstance(record, Mapping) else {"run": "?", "operation": "?"}


def funfleet_lock_state(record: Mapping[str, Any], me: Mapping[str, Any]) -> str:
    if not record:
        return "free"
    if record.get("run") == me["run"]:
        return "ours"
    if record.get("controller") == me["controller"] and record.get("machine") == me["machine"] != "?:?":
        pid = int(record.get("pid") or 0)
        alive = pid > 0 and _is_playbook(pid) and f"{me['controller']}:{pid}:{_start_time(pid)}" == record.get("run")
        return "held" if alive else "stale"
    return "held"


class FilterModule:
    def filters(self) -> dict:
        return {
            "funfleet_lock_holder": funfleet_lock_holder,
            "funfleet_lock_record": funfleet_lock_record,
            "funfleet_lock_state": funfleet_lock_state,
        }
