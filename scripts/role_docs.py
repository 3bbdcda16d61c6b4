"""Write each role README's variable table from its meta/argument_specs.yml.

The table sits between the README's BEGIN and END VARIABLES markers; nothing else of the README
is touched. Defaults come from the role's defaults/main.yml (else the spec), descriptions from
the spec (a string or Ansible's list of paragraphs). tests/test_repo.py fails when a committed
table differs from a fresh render, or says something the specs do not.

python scripts/role_docs.py          # rewrite the tables
python scripts/role_docs.py --check  # exit 1 if any table is stale
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN VARIABLES -->", "<!-- END VARIABLES -->"


def text(value: object) -> str:
    """An argument spec's description: a string, or a list of paragraphs (Ansible's form), as one
    line of table text."""
    paragraphs = value if isinstance(value, list) else [value]
    return " ".join(" ".join(str(p).split()) for p in paragraphs if p is not None)


def code(value: str) -> str:
    """``value`` as a Markdown code span, fenced past any backticks it holds."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def default_cell(name: str, spec: dict, defaults: dict) -> str:
    """The default as the role has it (defaults/main.yml, else the spec), shown as YAML would
    read it back: a string as it is (whitespace collapsed; "" when empty), anything else as
    compact JSON (lists, mappings, numbers, booleans). An option with no default is required."""
    if name in defaults:
        default = defaults[name]
    elif "default" in spec:
        default = spec["default"]
    else:
        return "required" if spec.get("required") else ""
    shown = (" ".join(default.split()) or '""') if isinstance(default, str) else json.dumps(default, ensure_ascii=False)
    return code(shown).replace("|", "\\|")


def table(role: Path) -> str:
    options = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    rows = ["| Variable | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, spec in options.items():
        description = text(spec.get("description", "")).replace("|", "\\|")
        rows.append(f"| `{name}` | {spec.get('type', 'str')} | {default_cell(name, spec, defaults)} | {description} |")
    return "\n".join(rows)


def render(readme: str, body: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + body + "\n" + readme[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any table is stale")
    check = parser.parse_args().check
    stale = []
    for role in sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir()):
        readme = role / "README.md"
        current = readme.read_text()
        wanted = render(current, table(role))
        if wanted != current:
            stale.append(role.name)
            if not check:
                readme.write_text(wanted)
    if check and stale:
        print("stale variable tables (run python scripts/role_docs.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
