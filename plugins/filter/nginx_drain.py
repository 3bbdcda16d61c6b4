"""The drain file's record, as the nginx role's state entry point reads it.

``lines | nginx_drain_state`` takes the output of ``[ -e FILE ] && printf 'drained\\n' && cat FILE``
(nothing when the host is not drained), then, where the host has a health gate file that exists,
a line ``#gated`` and that file, and answers ``{drained, by, reason, gated, gate_reason,
out_of_rotation}`` (out of rotation: drained or gated). ``by`` is "operator" (drain.yml),
"rollout" (a deploy's or rollback's own drain) or "gpu_upgrade" (a driver upgrade's, held until
gpu_upgrade.yml has checked the host after its reboot: a deploy or rollback leaves it). A file
that holds no record (written before records were kept, or damaged) is an operator's: a host
someone drained stays drained until undrain.yml, whatever is in its file. A gated host's own
health check (a sick GPU) holds it out until the check passes again, whatever the rollouts do.
"""

from __future__ import annotations

import json
from typing import Any

NOT_DRAINED = {"drained": False, "by": "", "reason": ""}
DRAINED_BY = ("operator", "rollout", "gpu_upgrade")
GATE_MARK = "#gated"


def nginx_drain_state(lines: list[str]) -> dict[str, Any]:
    """The drain record, and the health gate: a gated host (its own health check failed, e.g. a
    sick GPU) is out of rotation whatever its drain file says, until the check passes again."""
    if GATE_MARK in lines:
        at = lines.index(GATE_MARK)
        drain = [line for line in lines[:at] if line.strip()]
        record = {**drain_record(drain), "gated": True, "gate_reason": gate_reason(lines[at + 1 :])}
    else:
        record = {**drain_record(lines), "gated": False, "gate_reason": ""}
    return {**record, "out_of_rotation": record["drained"] or record["gated"]}


def gate_reason(lines: list[str]) -> str:
    text = "\n".join(lines).strip()
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if isinstance(record, dict) and isinstance(record.get("reasons"), list):
        return "; ".join(str(reason) for reason in record["reasons"]) or "unhealthy"
    return text or "unhealthy"


def drain_record(lines: list[str]) -> dict[str, Any]:
    if not lines:
        return dict(NOT_DRAINED)
    text = "\n".join(lines[1:]).strip()
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {
            "drained": True,
            "by": "operator",
            "reason": "drained before reasons were recorded"
            if text in ("", "drained")
            else "an unreadable drain record",
        }
    by = record.get("by") if record.get("by") in DRAINED_BY else "operator"
    return {"drained": True, "by": by, "reason": str(record.get("reason") or "")}


class FilterModule:
    def filters(self) -> dict:
        return {"nginx_drain_state": nginx_drain_state}
