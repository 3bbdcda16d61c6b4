"""The drain file's record as the rolling plays read it (plugins/filter/nginx_drain.py):
who drained the host and why; a file without a readable record is an operator's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("nginx_drain", ROOT / "plugins/filter/nginx_drain.py")
drain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(drain)


NOT_GATED = {"gated": False, "gate_reason": ""}


def test_no_file_is_not_drained():
    assert drain.nginx_drain_state([]) == {
        "drained": False,
        "by": "",
        "reason": "",
        **NOT_GATED,
        "out_of_rotation": False,
    }


def test_a_record_says_who_and_why():
    lines = ["drained", '{"by": "rollout", "reason": "deploy"}']
    want = {"drained": True, "by": "rollout", "reason": "deploy", **NOT_GATED, "out_of_rotation": True}
    assert drain.nginx_drain_state(lines) == want


def test_a_health_gate_holds_the_host_out_with_its_reasons():
    gate = '{"ready": false, "reasons": ["nvidia-smi lists 1 of the 2 GPUs provisioned", "GPU 1 (0:86:00): XID 79"]}'
    state = drain.nginx_drain_state(["", "#gated", gate])
    assert state == {
        "drained": False,
        "by": "",
        "reason": "",
        "gated": True,
        "gate_reason": "nvidia-smi lists 1 of the 2 GPUs provisioned; GPU 1 (0:86:00): XID 79",
        "out_of_rotation": True,
    }
    both = drain.nginx_drain_state(["drained", '{"by": "rollout", "reason": "deploy"}', "", "#gated", "garbage"])
    assert (both["drained"], both["by"], both["gated"], both["gate_reason"]) == (True, "rollout", True, "garbage")


def test_a_file_without_a_record_or_a_bad_one_is_an_operators():
    assert drain.nginx_drain_state(["drained", "drained"])["by"] == "operator"  # written before records
    assert drain.nginx_drain_state(["drained", '{"by": "rollout"'])["by"] == "operator"  # cut short
    assert drain.nginx_drain_state(["drained", '{"by": "someone"}'])["by"] == "operator"
    assert drain.nginx_drain_state(["drained", "[1, 2]"])["drained"] is True


def test_a_record_cannot_say_the_host_is_not_drained():
    state = drain.nginx_drain_state(["drained", '{"drained": false, "by": "operator"}'])
    assert state == {"drained": True, "by": "operator", "reason": "", **NOT_GATED, "out_of_rotation": True}


def test_a_driver_upgrades_drain_is_its_own():
    state = drain.nginx_drain_state(["drained", '{"by": "gpu_upgrade", "reason": "driver upgrade"}'])
    assert (state["by"], state["reason"]) == ("gpu_upgrade", "driver upgrade")
