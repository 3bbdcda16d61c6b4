"""Where a benchmark's results go: docs/benchmarks.md, one block per result set, each written
whole by the run that measured it and headed by where and when that was.

    <!-- BEGIN BENCH digits -->
    - Commit: `<sha>` (+ uncommitted changes, when the tree had some)
    - Date: <UTC date and time>
    - Machine: <CPU model>, <N> cores, <M> GiB memory
    - Command: `<what ran>`
    ...the tables...
    <!-- END BENCH digits -->

A run replaces its own blocks and leaves the others (and the page's prose) alone. Figures are
never copied anywhere else by hand: tests/test_repo.py fails when another page quotes them, or
when a block lacks these lines.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
NOTE = "<!-- Written by {tool}; its next run replaces this block. Do not edit by hand. -->"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN BENCH {name} -->", f"<!-- END BENCH {name} -->"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit() -> str:
    """HEAD, and whether the measured tree differed from it (tracked files only)."""
    sha = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"`{sha}`" + (" + uncommitted changes" if dirty else "")


def machine() -> str:
    model = platform.processor() or platform.machine()
    memory = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        kib = next(
            int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line
        )
        memory = f", {kib / 2**20:.0f} GiB memory"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{model}, {os.cpu_count()} cores{memory}"


def provenance(command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([f"- Commit: {commit()}", f"- Date: {now}", f"- Machine: {machine()}", f"- Command: `{command}`"])


def block(name: str, tool: str, command: str, body: str) -> str:
    begin, end = markers(name)
    return f"{begin}\n{NOTE.format(tool=tool)}\n{provenance(command)}\n\n{body.strip()}\n{end}"


def write(name: str, tool: str, command: str, body: str, doc: Path = DOC) -> None:
    """Put the block ``name`` into ``doc``: in place of the old one, else at the end."""
    begin, end = markers(name)
    new = block(name, tool, command, body)
    text = doc.read_text() if doc.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + new + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + new + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(f"results written to {doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc} ({begin})")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
