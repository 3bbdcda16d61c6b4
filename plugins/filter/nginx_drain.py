"""The drain file's record, as the nginx role's state entry point reads it.

``lines | nginx_drain_state`` takes the output of ``[ -e FILE ] && printf 'drained\\n' && cat FILE``
(nothing when the host is not drained) and answers ``{drained, by, reason}``. ``by`` is
"operator" (drain.yml) or "rollout" (a deploy's or rollback's own drain). A file that holds no
record (written before records were kept, or damaged) is an operator's: a host someone drained
stays drained until undrain.yml, whatever is in its file.
"""

from __future__ import annotations

import json
from typing import Any

NOT_DRAINED = {"drained": False, "by": "", "reason": ""}


def nginx_drain_state(lines: list[str]) -> dict[str, Any]:
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
    by = record.get("by") if record.get("by") in ("operator", "rollout") else "operator"
    return {"drained": True, "by": by, "reason": str(record.get("reason") or "")}


class FilterModule:
    def filters(self) -> dict:
        return {"nginx_drain_state": nginx_drain_state}
