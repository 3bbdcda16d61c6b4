"""Repository invariants: each role has the layout every role here has and every role variable
carries its role's prefix; the role READMEs' variable tables are a fresh render of the roles'
argument specs and say what the specs say; no package registry this machine uses is named in
the repository; and the docs (README.md, docs/*.md, the role READMEs) hold only what is true of
the repository: links and paths that exist, variable names the code uses, and benchmark figures
only where the benchmark tools wrote them, each block with the commit it was measured on."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
# The pages a reader reads: the top-level README, docs/, and each role's README.
DOC_PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
ROLE_READMES = [role / "README.md" for role in ROLES]
BEGIN, END = "<!-- BEGIN VARIABLES -->", "<!-- END VARIABLES -->"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def specs_of(role: Path) -> dict:
    return yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]


def committed_table(role: Path) -> str:
    text = (role / "README.md").read_text()
    assert BEGIN in text, f"{role.name}/README.md has no {BEGIN}"
    assert END in text, f"{role.name}/README.md has no {END}"
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip("\n")


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_layout_and_prefixes(role):
    for part in ("defaults/main.yml", "meta/argument_specs.yml", "meta/main.yml", "handlers/main.yml", "README.md"):
        assert (role / part).is_file(), part
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = specs_of(role)
    assert all(name.startswith(role.name + "_") for name in defaults), role.name
    assert all(name.startswith(role.name + "_") for name in specs), role.name
    # Every default is specified; an option with no default is one the play must pass (the
    # fleet settings work those out).
    assert set(defaults) <= set(specs)
    for name in set(specs) - set(defaults):
        assert specs[name].get("required") is True, f"{role.name}: {name} has no default and is not required"
    for vars_file in (role / "vars").glob("*.yml"):
        names = yaml.safe_load(vars_file.read_text()) or {}
        assert all(name.startswith(role.name + "_") for name in names), vars_file


# --- Role READMEs: generated tables, checked against the specs --------------------------------


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_readme_table_is_a_fresh_render(role):
    """The committed table is what scripts/role_docs.py renders from the role today."""
    fresh = load(ROOT / "scripts" / "role_docs.py").table(role)
    committed = committed_table(role)
    diff = "\n".join(
        difflib.unified_diff(committed.splitlines(), fresh.splitlines(), "committed", "fresh", lineterm="")
    )
    assert committed == fresh, f"stale table in roles/{role.name}/README.md; run scripts/role_docs.py\n{diff}"


def cells(row: str) -> list[str]:
    """A Markdown table row's cells (pipes escaped as \\| stay in their cell)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def unfence(cell: str) -> str:
    """The text of a cell that is one code span (``x``, or ```` `` `x` `` ````)."""
    match = re.fullmatch(r"(`+) ?(.*?) ?\1", cell)
    assert match, f"not a code span: {cell!r}"
    return match.group(2)


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_readme_table_says_what_the_specs_say(role):
    """Read back independently of the generator: one row per option, in the specs' order, with
    the spec's type, the spec's description (a string, or Ansible's list of paragraphs, as
    text), and the role's default as YAML would read it back (no Python reprs); an option with
    no default is marked required."""
    specs = specs_of(role)
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    rows = committed_table(role).splitlines()
    assert cells(rows[0]) == ["Variable", "Type", "Default", "Description"]
    table = [cells(row) for row in rows[2:]]
    assert [unfence(row[0]) for row in table] == list(specs), "the table's variables are not the specs' options"
    for code_name, kind, default, description in table:
        name = unfence(code_name)
        spec = specs[name]
        assert kind == spec.get("type", "str"), name
        paragraphs = spec.get("description", "")
        paragraphs = paragraphs if isinstance(paragraphs, list) else [paragraphs]
        assert description == " ".join(" ".join(str(p).split()) for p in paragraphs), name
        if name in defaults or "default" in spec:
            value = defaults.get(name, spec.get("default"))
            shown = unfence(default)
            if isinstance(value, str):
                assert shown == (" ".join(value.split()) or '""'), name
            else:
                assert yaml.safe_load(shown) == value, f"{name}: {shown!r} does not read back as {value!r}"
        else:
            assert default == ("required" if spec.get("required") else ""), name


# --- Package registries: never named in the repository ----------------------------------------


def registries() -> list[tuple[str, set[str]]]:
    """(where it is configured, its hosts) for every package registry this machine uses over the
    network: apt's deb822 and one-line sources, and pip's index URLs (environment or config)."""
    found: list[tuple[str, set[str]]] = []

    def hosts_of(urls: list[str]) -> set[str]:
        return {u.split("/")[2] for u in urls if re.match(r"^[a-z+]+://[^/]", u)}

    apt = Path("/etc/apt")
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        urls = [
            u for line in path.read_text().splitlines() if line.strip().startswith("URIs:") for u in line.split()[1:]
        ]
        found.append((str(path), hosts_of(urls)))
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            lines = [line.split() for line in path.read_text().splitlines() if re.match(r"^\s*deb(-src)?\s", line)]
            found.append((str(path), hosts_of([t for tokens in lines for t in tokens if "://" in t])))
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False, timeout=60
    ).stdout
    for key in ("index-url", "extra-index-url"):
        urls = [
            u
            for line in pip.splitlines()
            if re.match(rf"^[^.]+\.{key}=", line)
            for u in line.split("=", 1)[1].strip("'").split()
        ]
        env = os.environ.get(f"PIP_{key.upper().replace('-', '_')}", "").split()
        found.append((f"pip {key}", hosts_of(urls + env)))
    return [(where, hosts) for where, hosts in found if hosts]


REGISTRIES = registries()


@functools.cache
def repository_files() -> dict[str, bytes]:
    """Every file git tracks, and every new one it does not ignore (so a file is checked before
    it is committed), but the binary model and image files."""
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    binary = {".keras", ".png", ".jpg", ".joblib", ".onnx", ".npz", ".tflite"}
    return {n: (ROOT / n).read_bytes() for n in names if (ROOT / n).is_file() and Path(n).suffix not in binary}


@pytest.mark.parametrize(
    ("where", "hosts"),
    [pytest.param(w, h, id=w) for w, h in REGISTRIES] or [pytest.param("", set(), id="none-configured")],
)
def test_no_registry_host_is_named_in_the_repository(where, hosts):
    """Each package registry this machine is configured with (one test per place it is
    configured, named by that place, never by the host): its host appears in no file of the
    repository, so a private mirror's name never leaks into a commit."""
    if not hosts:
        pytest.skip(
            "this machine names no package registry host (no apt sources with network URIs, no pip index URL): "
            "nothing to check"
        )
    named = sorted(name for name, data in repository_files().items() if any(h.encode() in data for h in hosts))
    assert not named, f"the registry configured in {where} is named in: {', '.join(named)}"


# --- The docs: links, paths and names that exist ----------------------------------------------


def prose(page: Path) -> str:
    """A page's text as written by hand: a role README's generated table (the specs' own words,
    checked above) left out."""
    text = page.read_text()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + text[text.index(END) :]
    return text


def without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", without_fences(page.read_text()), flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return out


def test_readme_is_a_door():
    """README.md gets a newcomer running and says where to read on; the rest lives in docs/."""
    text = README.read_text()
    assert len(text.splitlines()) < 200, "README.md has grown past 200 lines: move the detail into docs/"
    assert "make demo" in text
    assert "make test" in text


@pytest.mark.parametrize("page", DOC_PAGES + ROLE_READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """Every relative link points at a file that exists, and at a heading of it that exists."""
    broken = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", without_fences(page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


PATH_ROOTS = (
    ".ci/",
    "app/",
    "bench/",
    "docs/",
    "files/",
    "inventory/",
    "molecule/",
    "playbooks/",
    "roles/",
    "scripts/",
    "tests/",
)


def code_text(page: Path) -> list[str]:
    """What a page says in code: inline code spans, and fenced blocks."""
    text = prose(page)
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    return fenced + re.findall(r"`([^`\n]+)`", without_fences(text))


@pytest.mark.parametrize("page", DOC_PAGES + ROLE_READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_named_in_code_exist(page):
    """A repository path a page names in code (`roles/uwsgi/files/base.ini`, a script in a
    command) exists: a file moved or removed fails here until the docs follow."""
    missing = set()
    for code in code_text(page):
        for word in re.split(r"[\s'\"=(),;]+", code):
            token = word.rstrip(".:")
            if (
                token.startswith(PATH_ROOTS)
                and not re.search(r"[<>*{}$]|\.\.\.", token)
                and not (ROOT / token).exists()
            ):
                missing.add(token)
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {', '.join(sorted(missing))}"


@functools.cache
def code_corpus() -> str:
    """The text of everything that defines or reads a variable or a metric (docs excluded)."""
    parts = (
        "roles/",
        "playbooks/",
        "plugins/",
        "app/",
        "molecule/",
        "tests/",
        "bench/",
        "files/grafana/",
        "inventory/",
        "site.yml",
    )
    return "\n".join(
        data.decode(errors="ignore")
        for name, data in repository_files().items()
        if name.startswith(parts) and not name.endswith(".md")
    )


@pytest.mark.parametrize("page", DOC_PAGES + ROLE_READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_variable_names_in_code_are_the_codes(page):
    """A role-prefixed name a page gives in code (`funfleet_lb_tries`, `uwsgi_options`, a metric
    such as `funfleet_model_ready`) is one the roles, plays, app or tests use: a variable renamed
    or removed fails here until the docs follow."""
    prefixes = "|".join(re.escape(role.name + "_") for role in ROLES)
    name = re.compile(rf"\b(?:{prefixes})[a-z0-9_]*[a-z0-9]")
    unknown = {n for code in code_text(page) for n in name.findall(code) if n not in code_corpus()}
    assert not unknown, f"{page.relative_to(ROOT)} names what no code uses: {', '.join(sorted(unknown))}"


# --- Benchmark figures: written by the tools that measured them, nowhere else ------------------

# What a benchmark figure looks like: a throughput, a speed-up ratio, a latency percentile or a
# per-call time. Limits, defaults and model-quality figures are not benchmark figures.
FIGURES = [
    re.compile(r"\b\d+(?:,\d{3})*(?:\.\d+)?\s*(?:images|img|requests|req|predictions)/s\b"),
    re.compile(r"(?<![\w.])\d+(?:\.\d+)?x(?!\w)"),
    re.compile(r"\bp(?:50|99)\b[^.\n|]{0,40}?\d+(?:\.\d+)?\s*ms\b"),
    re.compile(r"\d+(?:\.\d+)?\s*ms (?:a|per) (?:call|request)\b"),
]


@pytest.mark.parametrize(
    "page", [p for p in DOC_PAGES if p != BENCHMARKS] + ROLE_READMES, ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_page_but_benchmarks_quotes_benchmark_figures(page):
    """Figures copied by hand go stale: make bench and bench/rollout_latency.py write theirs into
    docs/benchmarks.md, and every other page links there."""
    quoted = [
        f"line {number}: {match.group(0)!r}"
        for number, line in enumerate(prose(page).splitlines(), 1)
        for pattern in FIGURES
        for match in pattern.finditer(line)
    ]
    assert not quoted, f"{page.relative_to(ROOT)} quotes benchmark figures (link docs/benchmarks.md): {quoted}"


BLOCK = re.compile(r"<!-- BEGIN BENCH (\S+) -->\n(.*?)<!-- END BENCH \1 -->", re.S)


def block_problems(text: str) -> list[str]:
    """What is wrong with the generated blocks of a benchmarks page."""
    blocks = BLOCK.findall(text)
    problems = []
    if text.count("<!-- BEGIN BENCH ") != len(blocks) or text.count("<!-- END BENCH ") != len(blocks):
        problems.append("a BEGIN BENCH marker without its END (or the reverse)")
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    for name, body in blocks:
        commit = re.search(r"^- Commit: `([0-9a-f]{7,40})`", body, flags=re.M)
        if not commit:
            problems.append(f"block {name} has no commit line (- Commit: `<sha>`)")
        elif shallow == "false":
            known = subprocess.run(
                ["git", "cat-file", "-e", f"{commit.group(1)}^{{commit}}"], cwd=ROOT, capture_output=True, check=False
            )
            if known.returncode != 0:
                problems.append(f"block {name}: commit {commit.group(1)} is not in this repository's history")
        if not re.search(r"^- Date: \d{4}-\d{2}-\d{2}", body, flags=re.M):
            problems.append(f"block {name} has no date line")
        if not re.search(r"^- Machine: \S", body, flags=re.M):
            problems.append(f"block {name} has no machine line")
    return problems


def test_benchmark_blocks_say_where_they_were_measured():
    text = BENCHMARKS.read_text()
    names = {name for name, _ in BLOCK.findall(text)}
    assert names >= {"digits", "mobilenetv2", "kinds", "rollout"}, f"blocks: {sorted(names)}"
    assert not block_problems(text), block_problems(text)


def test_the_benchmark_tools_write_blocks_that_pass(tmp_path):
    """bench/benchdoc.py, which make bench and bench/rollout_latency.py write through, heads each
    block with what the check above asks, and replaces its own block without touching the rest."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        benchdoc = load(ROOT / "bench" / "benchdoc.py")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nProse stays.\n")
    for body in ("### digits\n\n| a |\n| --- |\n| 1 |", "### digits\n\n| a |\n| --- |\n| 2 |"):
        benchdoc.write("digits", "bench/bench.py", "make bench", body, page)
    benchdoc.write("kinds", "bench/bench.py", "make bench", "### kinds", page)
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nProse stays.\n")
    assert [name for name, _ in BLOCK.findall(text)] == ["digits", "kinds"]
    assert "| 2 |" in text
    assert "| 1 |" not in text
    assert not block_problems(text), block_problems(text)
