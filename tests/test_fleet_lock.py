"""The fleet's operation lock as the controller reads it (plugins/filter/funfleet_lock.py):
who this run is, and what a lock record found on the lock host means for it."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from role_helpers import ansible_playbook

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("funfleet_lock", ROOT / "plugins/filter/funfleet_lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def fake_playbook(tmp_path: Path) -> subprocess.Popen:
    """A process whose command line is ansible-playbook's (python3 .../ansible-playbook ...)."""
    script = tmp_path / "ansible-playbook"
    script.write_text("import time\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, str(script)])
    for _ in range(50):  # its command line is there once exec is done
        if lock._is_playbook(proc.pid):
            return proc
        time.sleep(0.1)
    raise AssertionError("the fake ansible-playbook never showed its command line")


def record_of(pid: int, **extra) -> dict:
    host = socket.gethostname()
    return {
        "run": f"{host}:{pid}:{lock._start_time(pid)}",
        "controller": host,
        "machine": lock._machine(),
        "pid": pid,
        **extra,
    }


def test_this_run_names_its_controller_user_and_operation():
    me = lock.funfleet_lock_holder("deploy")
    assert me["controller"] == socket.gethostname()
    assert me["operation"] == "deploy"
    assert me["run"].startswith(f"{me['controller']}:{me['pid']}:")
    assert me["since"].endswith("Z")


def test_free_ours_and_another_controllers_lock():
    me = lock.funfleet_lock_holder("deploy")
    assert lock.funfleet_lock_state(lock.funfleet_lock_record(""), me) == "free"
    assert lock.funfleet_lock_state(dict(me), me) == "ours"
    other = {"run": "elsewhere:12:34", "controller": "elsewhere", "pid": 12}
    assert lock.funfleet_lock_state(other, me) == "held"  # cannot be checked from here: only a break takes it
    # Same host name, another machine (a CI runner, a container): not this controller either.
    twin = {"run": f"{me['controller']}:12:34", "controller": me["controller"], "machine": "0123:other", "pid": 12}
    assert lock.funfleet_lock_state(twin, me) == "held"


def test_a_live_run_on_this_controller_holds_it_and_a_dead_one_is_stale(tmp_path):
    me = lock.funfleet_lock_holder("rollback")
    proc = fake_playbook(tmp_path)
    try:
        found = record_of(proc.pid, operation="deploy")
        assert lock.funfleet_lock_state(found, me) == "held"
    finally:
        proc.kill()
        proc.wait()
    assert lock.funfleet_lock_state(found, me) == "stale"


def test_a_reused_pid_is_not_taken_for_the_run(tmp_path):
    """The pid is alive and runs ansible-playbook, but it started at another time: another run."""
    me = lock.funfleet_lock_holder("rollback")
    proc = fake_playbook(tmp_path)
    try:
        found = record_of(proc.pid) | {"run": f"{socket.gethostname()}:{proc.pid}:1"}
        assert lock.funfleet_lock_state(found, me) == "stale"
    finally:
        proc.kill()
        proc.wait()


def test_a_record_that_is_not_json_names_nobody_but_still_holds():
    me = lock.funfleet_lock_holder("drain")
    found = lock.funfleet_lock_record("garbage")
    assert found["operation"] == "?"
    assert lock.funfleet_lock_state(found, me) == "held"


def lock_run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """playbooks/lock.yml and unlock.yml as the playbooks import them, on two pretend local app
    hosts, with every file under tmp_path (drain files: tmp_path/<host>.drained)."""
    hosts = {
        name: {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "funfleet_plan": {
                "params": {
                    "nginx_drain_file": str(tmp_path / f"{name}.drained"),
                    "nginx_health_gate_file": str(tmp_path / f"{name}.gate"),
                }
            },
        }
        for name in ("app1", "app2")
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"app": {"hosts": hosts}}}}))
    (tmp_path / "out").mkdir(exist_ok=True)
    return ansible_playbook(
        "-i",
        str(tmp_path / "hosts.yml"),
        "tests/wiring/lock.yml",
        "-e",
        f"out={tmp_path / 'out'}",
        "-e",
        f"funfleet_lock_file={tmp_path / 'operation.lock'}",
        *extra,
    )


def test_the_plays_take_the_lock_read_the_drain_states_and_release_it(tmp_path):
    (tmp_path / "app2.drained").write_text('{"by": "operator", "reason": "disk swap"}\n')
    result = lock_run(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    seen = {name: json.loads((tmp_path / "out" / f"{name}.json").read_text()) for name in ("app1", "app2")}
    assert json.loads(seen["app1"]["lock"])["operation"] == "test"  # held while the run went on
    not_gated = {"gated": False, "gate_reason": ""}
    assert seen["app1"]["drain"] == {"drained": False, "by": "", "reason": "", **not_gated, "out_of_rotation": False}
    assert seen["app2"]["drain"] == {
        "drained": True,
        "by": "operator",
        "reason": "disk swap",
        **not_gated,
        "out_of_rotation": True,
    }


def test_a_host_held_out_by_its_health_gate_reads_out_of_rotation(tmp_path):
    """The GPU collector's gate file (its reasons) makes the host out of rotation for the rolling
    plays' count, drained or not; an operator's drain keeps its record beside it."""
    gate = {
        "ready": False,
        "code": "gpu_unhealthy",
        "reasons": ["GPU 0 (0:3b:00): XID 79 (GPU has fallen off the bus), 1 this boot"],
    }
    (tmp_path / "app1.gate").write_text(json.dumps(gate) + "\n")
    (tmp_path / "app2.gate").write_text(json.dumps(gate))  # no final line break
    (tmp_path / "app2.drained").write_text('{"by": "operator", "reason": "disk swap"}')
    result = lock_run(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    seen = {name: json.loads((tmp_path / "out" / f"{name}.json").read_text())["drain"] for name in ("app1", "app2")}
    reason = gate["reasons"][0]
    assert seen["app1"] == {
        "drained": False,
        "by": "",
        "reason": "",
        "gated": True,
        "gate_reason": reason,
        "out_of_rotation": True,
    }
    assert seen["app2"] == {
        "drained": True,
        "by": "operator",
        "reason": "disk swap",
        "gated": True,
        "gate_reason": reason,
        "out_of_rotation": True,
    }
    assert not (tmp_path / "operation.lock").exists()  # released at the end


def test_under_limit_the_lock_is_still_taken_and_the_others_drain_state_read(tmp_path):
    (tmp_path / "app1.drained").write_text('{"by": "rollout", "reason": "deploy"}\n')
    result = lock_run(tmp_path, "-l", "app2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    seen = json.loads((tmp_path / "out" / "app2.json").read_text())
    assert json.loads(seen["lock"])["operation"] == "test"
    assert "ok: [app2 -> app1] => (item=app1)" in result.stdout  # app1's drain file, read from app2


def test_another_runs_lock_stops_the_run_before_anything_else(tmp_path):
    record = {"run": "ops:1:2", "operation": "deploy", "user": "alice", "controller": "ops", "pid": 1, "since": "T"}
    (tmp_path / "operation.lock").write_text(json.dumps(record) + "\n")
    result = lock_run(tmp_path, "-l", "app2")
    words = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, words[-3000:]
    assert "The fleet is locked by deploy of alice@ops (pid 1) since T" in words
    assert not (tmp_path / "out" / "app2.json").exists()  # the plays after it never ran
    assert json.loads((tmp_path / "operation.lock").read_text()) == record


def test_check_mode_takes_no_lock(tmp_path):
    result = lock_run(tmp_path, "--check")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert not (tmp_path / "operation.lock").exists()
