"""The drain file's record as the rolling plays read it (plugins/filter/nginx_drain.py):
who drained the host and why; a file without a readable record is an operator's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("nginx_drain", ROOT / "plugins/filter/nginx_drain.py")
drain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(drain)


def test_no_file_is_not_drained():
    assert drain.nginx_drain_state([]) == {"drained": False, "by": "", "reason": ""}


def test_a_record_says_who_and_why():
    lines = ["drained", '{"by": "rollout", "reason": "deploy"}']
    assert drain.nginx_drain_state(lines) == {"drained": True, "by": "rollout", "reason": "deploy"}


def test_a_file_without_a_record_or_a_bad_one_is_an_operators():
    assert drain.nginx_drain_state(["drained", "drained"])["by"] == "operator"  # written before records
    assert drain.nginx_drain_state(["drained", '{"by": "rollout"'])["by"] == "operator"  # cut short
    assert drain.nginx_drain_state(["drained", '{"by": "someone"}'])["by"] == "operator"
    assert drain.nginx_drain_state(["drained", "[1, 2]"])["drained"] is True


def test_a_record_cannot_say_the_host_is_not_drained():
    state = drain.nginx_drain_state(["drained", '{"drained": false, "by": "operator"}'])
    assert state == {"drained": True, "by": "operator", "reason": ""}
