"""Write each role README's variable table from its meta/argument_specs.yml.

python scripts/role_docs.py          # rewrite the tables
python scripts/role_docs.py --check  # exit 1 if any table is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN VARIABLES -->", "<!-- END VARIABLES -->"


def table(role: Path) -> str:
    options = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    rows = ["| Variable | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, spec in options.items():
        default = defaults.get(name, spec.get("default", ""))
        shown = json.dumps(default) if not isinstance(default, str) else default.strip()
        shown = shown.replace("|", "\\|").replace("\n", " ")
        description = " ".join(str(spec.get("description", "")).split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {spec.get('type', 'str')} | `{shown}` | {description} |")
    return "\n".join(rows)


def render(readme: str, body: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + body + "\n" + readme[end:]


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for role in sorted((ROOT / "roles").iterdir()):
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
