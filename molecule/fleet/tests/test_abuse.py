"""Abuse through the balancer while well-behaved clients predict: every hostile class of
molecule/shared/hostile.py, sent by several clients at once, as fast as they go (bounded in
requests and seconds), and a flood of cheap hostile requests from the scenario's client host
(its own address, so it runs into the per-client rate limit, molecule/shared/flood.py), beside
keep-alive clients sending normal predictions.

Asserted: the well-behaved clients lose nothing; every hostile request gets its 4xx (or a 429);
the large-but-legal ones are served; the balancer marks no host down (its error log); no uWSGI
worker is killed or respawned (the app hosts' journals) and journald drops none of the app's
lines; the metric series stay bounded. The numbers go to .cache/abuse-report.txt, which
`make test` prints.

Runs before test_fleet.py (file order) on the same fleet, and leaves it as it found it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from fleetcheck import BASE, ROOT, Load, sh, wait_ready
from hostile import CLASSES

testinfra_hosts = ["funfleet-fleet-lb"]  # every test runs once; hosts are reached with docker exec

LB = "funfleet-fleet-lb"
APPS = ["funfleet-fleet-app1", "funfleet-fleet-app2"]
CLIENT = "funfleet-fleet-client"
FLOOD = Path(__file__).resolve().parents[2] / "shared" / "flood.py"
FLOOD_SECONDS = 15
PER_CLASS = 25  # requests of each hostile class
LOAD_BOUND = 1_000_000  # well-behaved requests at most (they stop when the hostile clients do)
SENDERS = 4  # hostile clients at once
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"}


def error_log_size() -> int:
    return int(sh(LB, "stat", "-c", "%s", "/var/log/nginx/error.log").stdout)


def error_log_since(offset: int) -> str:
    return sh(LB, "tail", "-c", f"+{offset + 1}", "/var/log/nginx/error.log").stdout


def journal_since(container: str, since: float, *unit: str) -> str:
    return sh(container, "journalctl", *unit, "--since", f"@{int(since)}", "-o", "cat", "--no-pager").stdout


def method_labels(container: str) -> set[str]:
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1/metrics', timeout=5).read().decode())"
    text = sh(container, "python3", "-c", code).stdout
    labels = set()
    for line in text.splitlines():
        if line.startswith("funfleet_http_requests_total{"):
            labels.add(line.split('method="', 1)[1].split('"', 1)[0])
    return labels


@pytest.fixture(scope="module")
def abuse():
    """Run the abuse once; the tests read its outcome."""
    wait_ready()
    log_offset = error_log_size()
    started = time.time()
    work = [name for name in CLASSES for _ in range(PER_CLASS)]
    statuses: dict[str, Counter] = defaultdict(Counter)
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 300

    def sender(index: int) -> None:
        for name in work[index::SENDERS]:
            if time.monotonic() > deadline:
                return
            send, _ = CLASSES[name]
            try:
                status, _ = send(BASE)
            except Exception as exc:  # any failure (a reset, a timeout) is a finding, reported below
                with lock:
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            with lock:
                statuses[name][status] += 1

    flood: dict = {}

    def flooder() -> None:
        """The client host (its own address, so the balancer's per-client limits are its own):
        cheap hostile requests as fast as it can, bounded in seconds and requests."""
        out = sh(CLIENT, "python3", "/root/flood.py", LB, "80", str(FLOOD_SECONDS), "60000", "4", timeout=120)
        flood.update(json.loads(out.stdout))

    subprocess.run(["docker", "cp", str(FLOOD), f"{CLIENT}:/root/flood.py"], check=True, timeout=60)
    with Load(threads=4, keepalive=4, max_requests=LOAD_BOUND, max_seconds=400) as load:
        time.sleep(2)
        threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(SENDERS)]
        threads.append(threading.Thread(target=flooder, daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        time.sleep(2)
    outcome = {
        "flood": flood,
        "load": load,
        "statuses": statuses,
        "errors": errors,
        "log": error_log_since(log_offset),
        "journals": {app: journal_since(app, started - 1, "-u", "funfleet") for app in APPS},
        "suppressed": {app: journal_since(app, started - 1) for app in APPS},
        "seconds": time.time() - started,
    }
    lines = [f"abuse through the balancer for {outcome['seconds']:.0f}s, {SENDERS} hostile clients at once:"]
    for name, count in statuses.items():
        lines.append(f"  {name}: {sum(count.values())} sent, statuses {dict(sorted(count.items()))}")
    if flood:
        rate = flood["sent"] / max(flood["seconds"], 0.1)
        lines.append(
            f"  flood from the client host (cheap hostile requests, 4 processes, keep-alive): {flood['sent']} in "
            f"{flood['seconds']}s ({rate:.0f}/s), statuses {flood['statuses']}"
        )
    lines.append(f"  well-behaved (keep-alive) meanwhile: {load.summary()}")
    (ROOT / ".cache").mkdir(exist_ok=True)
    (ROOT / ".cache" / "abuse-report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return outcome


def test_well_behaved_clients_lose_nothing(abuse):
    load = abuse["load"]
    # They ran until the hostile clients were done: stopped then, not by their request bound.
    assert load.ok + len(load.failures) < LOAD_BOUND, load.summary()
    assert load.ok > 0, load.summary()
    assert load.failures == [], load.summary() + "\n" + "\n".join(load.failures[:10])


def test_every_hostile_request_gets_its_4xx_and_every_legal_one_is_served(abuse):
    assert abuse["errors"] == []
    wrong = {}
    for name, (_, expected) in CLASSES.items():
        got = abuse["statuses"][name]
        assert sum(got.values()) == PER_CLASS, (name, got)
        bad = {
            status: n for status, n in got.items() if status not in expected | ({429} if 200 not in expected else set())
        }
        if bad:
            wrong[name] = bad
    assert wrong == {}, wrong


def test_a_flood_at_the_rate_limit_gets_4xx_and_429_only(abuse):
    flood = abuse["flood"]
    assert flood["sent"] > 0, flood
    bad = {status: n for status, n in flood["statuses"].items() if not (status.isdigit() and 400 <= int(status) < 500)}
    assert bad == {}, flood


def test_the_balancer_marks_no_host_down(abuse):
    # The balancer logs at warn, where nginx says it marked a host down.
    assert "error_log /var/log/nginx/error.log warn;" in sh(LB, "nginx", "-T").stdout
    marked = [
        line for line in abuse["log"].splitlines() if "temporarily disabled" in line or "no live upstreams" in line
    ]
    assert marked == [], "\n".join(marked[:5])
    upstream_errors = [line for line in abuse["log"].splitlines() if "upstream" in line and "[error]" in line]
    assert upstream_errors == [], "\n".join(upstream_errors[:5])


# How uWSGI and systemd say a worker died: harakiri, a crash, a respawn, the kernel's OOM killer.
WORKER_DEATHS = ("HARAKIRI", "DAMN ! worker", "Respawned uWSGI worker", "killed by the OOM killer", "Out of memory")


def test_no_worker_is_killed_and_no_log_line_dropped(abuse):
    for app, journal in abuse["journals"].items():
        # uWSGI's and systemd's own lines, not the app's JSON access lines: a hostile request's
        # random method ("OOMGMZNG") is no killed worker.
        killed = [
            line for line in journal.splitlines() if not line.startswith("{") and any(k in line for k in WORKER_DEATHS)
        ]
        assert killed == [], (app, killed[:5])
    for app, journal in abuse["suppressed"].items():
        dropped = [line for line in journal.splitlines() if "Suppressed" in line]
        assert dropped == [], (app, dropped[:5])


def test_metric_labels_stay_in_closed_sets(abuse):
    for app in APPS:
        assert method_labels(app) <= METHODS, app


def test_the_fleet_serves_as_before():
    wait_ready()
    states = sh(LB, "funfleet-lb", "status").stdout.split()
    assert states.count("serving") == len(APPS), states
