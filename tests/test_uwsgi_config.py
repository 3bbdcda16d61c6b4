"""One uWSGI configuration: app hosts, the app's tests, `make serve-app` and `make bench` all run
roles/uwsgi/files/base.ini, and each adds only the lines that are its own (workers, where it
listens, paths, control sockets). A shared option set anywhere else is drift, and fails here."""

from __future__ import annotations

import configparser
import getpass
import importlib.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from role_helpers import HOSTS, ROOT

BASE = ROOT / "roles" / "uwsgi" / "files" / "base.ini"
# What a host's ini may add to the base: where the app is, where it listens, its control sockets.
# Batching hosts add their threads, with accept() serialised across workers.
HOST_LINES = {
    "ini",
    "processes",
    "threads",
    "thunder-lock",
    "pythonpath",
    "chdir",
    "module",
    "socket",
    "chmod-socket",
    "stats",
    "master-fifo",
}
# What a local run may add: workers, where it listens, where the app is, its log.
LOCAL_LINES = {
    "ini",
    "processes",
    "module",
    "http",
    "http-keepalive",
    "http-socket",
    "socket",
    "chdir",
    "logto",
    "add-header",
    "threads",
}


def base_options() -> dict[str, str]:
    parser = configparser.ConfigParser(inline_comment_prefixes=None, comment_prefixes=(";", "#"))
    parser.read_string(BASE.read_text())
    return dict(parser["uwsgi"])


def ini_keys(text: str) -> list[tuple[str, str]]:
    pairs = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def argv_options(argv: list[str]) -> dict[str, str]:
    """uWSGI's command line as {option: value}; a flag with no value maps to ""."""
    options: dict[str, str] = {}
    i = 0
    while i < len(argv):
        assert argv[i].startswith("--"), argv[i:]
        name = argv[i][2:]
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        options[name] = value
        i += 2 if value else 1
    return options


def load(path: Path, name: str) -> ModuleType:
    """A module from its file, or a package from its folder, under its own name."""
    if path.is_dir():
        init = path / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def serve_app_argv() -> list[str]:
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "serve-app", "PORT=8000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in dry.replace("\\\n", " ").splitlines() if "/uwsgi --ini" in line)
    argv = shlex.split(line.split("exec ", 1)[1])
    # The recipe runs from app/: resolve the ini path it names the way uWSGI will.
    return [str((ROOT / "app" / a).resolve()) if a.endswith(".ini") else a for a in argv]


LOCAL_RUNS = {
    "app tests": lambda: load(ROOT / "app" / "tests" / "helpers", "app_test_helpers").uwsgi_command(
        "127.0.0.1:8000", Path("/tmp/log")
    ),
    "make bench": lambda: load(ROOT / "bench" / "bench.py", "funfleet_bench").uwsgi_command(2),
    "make serve-app": serve_app_argv,
}


def test_base_ini_holds_the_measured_choices():
    base = base_options()
    for flag in ("strict", "master", "lazy-apps", "need-app", "die-on-term", "skip-atexit"):
        assert base[flag] == "true", flag
    # Measured: with processes only it costs c=1 latency; threaded hosts add it themselves.
    assert "thunder-lock" not in base
    # Measured: workers that serve equal shares reach a request count together and all reload
    # at once; memory growth (reload-on-rss) is what recycles a worker.
    assert "max-requests" not in base
    assert base["reload-on-rss"] == "2048"
    # A stuck request gets nginx's 504 (never retried, never counted against the host) before
    # harakiri kills its worker; at the same second the kill raced it into a 502.
    nginx = yaml.safe_load((ROOT / "roles" / "nginx" / "defaults" / "main.yml").read_text())
    assert int(base["harakiri"]) > int(nginx["nginx_uwsgi_read_timeout"].rstrip("s"))
    # uWSGI takes the largest request nginx can pass: 65535 bytes of variables, each at least
    # 10 bytes (two 16-bit lengths and "HTTP_X"), so a request nginx accepted is never dropped.
    assert base["buffer-size"] == "65535"
    assert int(base["max-vars"]) >= 65535 // 10
    assert base["listen"] == "512"
    assert base["disable-logging"] == "true"


@pytest.mark.parametrize("host", HOSTS)
def test_hosts_run_the_base_and_only_their_own_lines(plans, host):
    pairs = ini_keys(plans[host]["uwsgi"]["ini"])
    assert pairs[0] == ("ini", "/etc/funfleet/base.ini")
    extra = {key for key, _ in pairs} - HOST_LINES
    assert not extra, f"the host ini sets shared options itself: {sorted(extra)}"
    assert not {key for key, _ in pairs} & (set(base_options()) - {"processes"})
    # accept() is serialised across workers only where workers also run threads.
    options = dict(pairs)
    threaded = int(options.get("threads", "1")) > 1
    assert options.get("thunder-lock") == ("true" if threaded else None)


def test_the_role_installs_the_same_base_file():
    tasks = (ROOT / "roles" / "uwsgi" / "tasks" / "main.yml").read_text()
    assert "src: base.ini" in tasks
    assert 'dest: "{{ uwsgi_config_dir }}/base.ini"' in tasks


@pytest.mark.parametrize("run", sorted(LOCAL_RUNS))
def test_local_runs_use_the_base_and_only_local_lines(run):
    argv = LOCAL_RUNS[run]()
    assert Path(argv[0]).name == "uwsgi"
    options = argv_options(argv[1:])
    assert Path(options["ini"]).resolve() == BASE
    extra = set(options) - LOCAL_LINES
    assert not extra, f"{run} sets shared options itself: {sorted(extra)}"


def test_the_bench_nginx_is_the_roles_own_site(tmp_path):
    """`make bench` puts the nginx role's app-host site in front of every funfleet row, rendered
    from the role's templates and defaults, rather than a config of its own (only the hand-tuned
    peer has its own plain uwsgi_pass)."""
    bench = load(ROOT / "bench" / "bench.py", "funfleet_bench")
    bench.bentoml_venv = lambda: None  # no BentoML venv is built for this
    rows = bench.servers(2, {}, tmp_path, tmp_path / "litert")
    ours = [row for row in rows if row.name.startswith("funfleet")]
    assert [row.name for row in ours] == [
        "funfleet nginx>uWSGI",
        "funfleet HTTPS",
        "funfleet batching",
        "funfleet LiteRT",
    ]
    assert all(row.location in (bench.ROLE_SITE, bench.ROLE_SITE_TLS) for row in ours)
    assert [row.name for row in rows if row.location == bench.UWSGI_PASS_SERVER] == ["hand-tuned nginx>uWSGI"]
    include = bench.render_role_site(tmp_path, 18555, tmp_path / "app.sock", False)
    site = tmp_path / "site-18555" / "funfleet-site.conf"
    http = tmp_path / "site-18555" / "funfleet-http.conf"
    assert [line.strip() for line in include.splitlines()] == [f"include {http};", f"include {site};"]
    text = site.read_text()
    assert f"server unix:{tmp_path / 'app.sock'};" in text
    assert f"if (-f {tmp_path / 'site-18555' / 'drained'})" in text
    assert "listen 127.0.0.1:18555 default_server;" in (tmp_path / "site-18555" / "funfleet-listen.conf").read_text()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_the_bench_nginx_config_is_valid(tmp_path, tls):
    """What `make bench` hands nginx (its own http block around the role's files) passes `nginx -t`."""
    bench = load(ROOT / "bench" / "bench.py", "funfleet_bench")
    include = bench.render_role_site(tmp_path, 18556, tmp_path / "app.sock", tls)
    conf = tmp_path / "nginx.conf"
    conf.write_text(bench.NGINX_CONF.format(user=getpass.getuser(), tmp=tmp_path, server=include))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    result = subprocess.run([nginx, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    listen = (tmp_path / "site-18556" / "funfleet-listen.conf").read_text()
    assert ("listen 127.0.0.1:18556 ssl http2 default_server;" in listen) is tls
