"""The deploy's canary under keep-alive load through the balancer, judged from the monitoring
host's Prometheus: a good release is promoted to every host; three bad ones (wrong labels, a
share of 5xx, markedly slower) are each aborted and rolled back by the judge; a release that gets
no traffic is not promoted. Clients fail on none of them. Runs after test_fleet.py and the GPU
tests (file order) from whatever release the fleet serves then."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetcheck import ROOT, Load, playbook, sh, wait_ready

testinfra_hosts = ["funfleet-fleet-lb"]
APPS = ["funfleet-fleet-app1", "funfleet-fleet-app2"]
CANARY, BASELINE = APPS
MONITOR = "funfleet-fleet-monitor"
MODEL_V1 = ROOT / "files" / "models" / "digits" / "1"
TEXTFILE = "/var/lib/prometheus/node-exporter/funfleet_canary.prom"
# Short windows (the monitoring host scrapes every 2 s here): two steps, 30% then 60% of a host's
# requests. At the load's 60 requests a second the canary answers about 90 in a first window.
STEPS = [30, 60]
WINDOW = 12
JUDGED = (
    "-e",
    "funfleet_canary=true",
    "-e",
    json.dumps({"funfleet_canary_steps": STEPS}),
    "-e",
    f"funfleet_canary_window={WINDOW}",
)
REPORT: dict[str, str] = {}
WINDOW_LINE = re.compile(r"canary \S+ window (\d+): (\w+).*?; canary (\d+) predictions.*?; baseline (\d+) predictions")


def release_of(container: str) -> str:
    return sh(container, "readlink", "/opt/funfleet/current").stdout.strip().rsplit("/", 1)[1]


def cut(tmp: Path, version: str, labels: list[str] | None = None) -> Path:
    """A model release as `make release` cuts it; ``labels`` replaces its labels.json first."""
    source = tmp / f"source-{version}"
    shutil.copytree(MODEL_V1, source)
    if labels is not None:
        (source / "labels.json").write_text(json.dumps(labels))
    out = tmp / f"digits-{version}"
    argv = [sys.executable, "-m", "inference.release_tools", "cut", str(source), version, "--out", str(out)]
    subprocess.run(argv, check=True, capture_output=True, timeout=120, cwd=ROOT / "app")
    return out


def buggy_app(tmp: Path, name: str, bug: str) -> Path:
    """The app code with ``bug`` run before every inference (its one path, on every protocol)."""
    target = tmp / f"app-{name}"
    target.mkdir()
    shutil.copy(ROOT / "app" / "wsgi.py", target)
    shutil.copytree(ROOT / "app" / "inference", target / "inference", ignore=shutil.ignore_patterns("__pycache__"))
    api = target / "inference" / "api" / "__init__.py"
    source = api.read_text()
    assert "\ndef infer(" in source
    api.write_text(
        source.replace("\ndef infer(", "\ndef _infer(")
        + f"\n\ndef infer(model, batch):  # a bug, for the canary tests\n    {bug}\n    return _infer(model, batch)\n"
    )
    return target


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("canary")
    digits = json.loads((MODEL_V1 / "labels.json").read_text())
    return {
        "good": cut(tmp, "21"),
        "quiet": cut(tmp, "23"),
        # The same model, its labels shifted by one: it answers 200, fast, and wrong.
        "wrong": cut(tmp, "22", labels=digits[1:] + digits[:1]),
        "failing": buggy_app(
            tmp, "failing", 'import random\n    if random.random() < 0.3:\n        raise RuntimeError("a bug")'
        ),
        "slow": buggy_app(tmp, "slow", "time.sleep(0.25)"),
    }


@pytest.fixture(scope="module", autouse=True)
def ready():
    wait_ready()
    yield
    report = "\n".join(f"{k}: {v}" for k, v in REPORT.items())
    path = ROOT / ".cache" / "fleet-report.txt"
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as out:
        out.write(report + "\n")
    print("\n== canary report ==\n" + report)


def deploy(*extra: str) -> tuple[subprocess.CompletedProcess, float, list[tuple[int, str, int, int]]]:
    started = time.monotonic()
    result = playbook("deploy.yml", *JUDGED, *extra, canary=True)
    # The output's YAML folds long messages over lines: read them as one. A failure's message
    # goes to stderr where molecule's verifier runs it.
    flat = " ".join((result.stdout + "\n" + result.stderr).split())
    # Each window once (an abort's message repeats the last one).
    windows = sorted({int(w): (int(w), v, int(c), int(b)) for w, v, c, b in WINDOW_LINE.findall(flat)}.values())
    result.stdout = flat
    return result, time.monotonic() - started, windows


def decision() -> str:
    return sh(CANARY, "cat", TEXTFILE).stdout


def alerts() -> list[dict]:
    code = (
        "import json, urllib.request; "
        "print(json.dumps(json.load(urllib.request.urlopen('http://127.0.0.1:9090/api/v1/alerts', timeout=5))))"
    )
    return json.loads(sh(MONITOR, "python3", "-c", code).stdout)["data"]["alerts"]


def firing(name: str, seconds: float = 40) -> dict | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [a for a in alerts() if a["labels"].get("alertname") == name and a["state"] == "firing"]
        if found:
            return found[0]
        time.sleep(2)
    return None


def served_share(windows: list[tuple[int, str, int, int]]) -> str:
    canary = sum(w[2] for w in windows)
    total = canary + sum(w[3] for w in windows)
    return f"{canary} of {total} predictions in the judged windows ({100 * canary / max(total, 1):.1f}%)"


def summary(windows: list[tuple[int, str, int, int]], seconds: float, result: subprocess.CompletedProcess) -> str:
    verdicts = ", ".join(f"window {w}: {v}" for w, v, _, _ in windows)
    reasons = re.findall(r"Canary aborted: .*", result.stdout)
    return f"{verdicts}; the canary served {served_share(windows)}; deploy {seconds:.0f} s; {reasons[0][:400] if reasons else ''}"


def test_a_good_release_is_promoted_and_reaches_every_host(releases):
    with Load(max_seconds=300) as load:
        result, seconds, windows = deploy("-e", f"app_release_model_src={releases['good']}")
    assert result.returncode == 0, result.stdout[-4000:]
    assert [v for _, v, _, _ in windows] == ["pass", "pass"], result.stdout[-4000:]
    assert "decision promote" in result.stdout
    assert load.failures == [], load.summary()
    good = release_of(CANARY)
    assert release_of(BASELINE) == good
    assert "digits-21" in good
    record = decision()
    assert f'release="{good}",canary="{CANARY}",decision="promote"' in record
    assert "funfleet_canary_decision_windows 2" in record
    assert sh(BASELINE, "test", "-e", TEXTFILE, check=False).returncode != 0
    # The share is gone with the canary phase: the canary takes all its requests again.
    assert sh(CANARY, "test", "-e", "/var/lib/funfleet/share", check=False).returncode != 0
    REPORT["canary: good release promoted"] = f"{summary(windows, seconds, result)}; load: {load.summary()}"


def abort(release_args: tuple[str, ...], reason: str, load: Load | None = None) -> tuple:
    before = release_of(CANARY)
    assert release_of(BASELINE) == before
    result, seconds, windows = deploy(*release_args)
    assert result.returncode != 0, result.stdout[-4000:]
    assert "Canary aborted" in result.stdout, result.stdout[-4000:]
    assert reason in result.stdout, result.stdout[-4000:]
    assert windows, result.stdout[-4000:]
    assert windows[-1][1] in ("fail", "inconclusive")
    # Back on the release before, in rotation, no share left; the other host was never switched.
    assert release_of(CANARY) == before
    assert release_of(BASELINE) == before
    assert sh(CANARY, "test", "-e", "/var/lib/funfleet/drained", check=False).returncode != 0
    assert sh(CANARY, "test", "-e", "/var/lib/funfleet/share", check=False).returncode != 0
    assert 'decision="abort"' in decision()
    alert = firing("FunfleetCanaryAborted")
    assert alert is not None, alerts()
    assert alert["labels"]["canary"] == CANARY
    wait_ready()
    return result, seconds, windows


def test_a_release_with_its_labels_permuted_is_aborted_on_its_predictions(releases):
    with Load(max_seconds=300, wrong_is_failure=False) as load:
        result, seconds, windows = abort(
            ("-e", f"app_release_model_src={releases['wrong']}"), "predicted classes differ from the baseline's"
        )
    assert load.failures == [], load.summary()
    assert set(load.wrong) <= {CANARY}
    total = load.ok
    REPORT["canary: labels permuted, aborted"] = (
        f"{summary(windows, seconds, result)}; clients got {sum(load.wrong.values())} wrong answers of {total} "
        f"({100 * sum(load.wrong.values()) / max(total, 1):.1f}%), 0 failed; load: {load.summary()}"
    )


@pytest.mark.parametrize(
    ("app", "reason", "name"),
    [("failing", "5xx ratio", "30% 5xx"), ("slow", "p99", "250 ms slower")],
    ids=["a-share-of-5xx", "markedly-slower"],
)
def test_a_release_with_a_bug_in_its_code_is_aborted_and_no_client_fails(releases, app, reason, name):
    """The app code fails 30% of its inferences, or sleeps 250 ms in each: the judge aborts on
    the 5xx ratio, or on the p99. The failing canary's 500s go to the other host (its nginx
    answers them with a 403 the balancer retries), so no client sees them."""
    with Load(max_seconds=300) as load:
        result, seconds, windows = abort(
            ("-e", f"app_release_model_src={releases['good']}", "-e", f"app_release_app_src={releases[app]}"), reason
        )
    assert load.failures == [], load.summary()
    REPORT[f"canary: {name}, aborted"] = f"{summary(windows, seconds, result)}; load: {load.summary()}"


def test_a_release_without_traffic_is_not_promoted(releases):
    """No client sends anything: every window is inconclusive, and after the ones allowed the
    canary is rolled back (fail safe) rather than promoted."""
    result, seconds, windows = abort(
        (
            "-e",
            f"app_release_model_src={releases['quiet']}",
            "-e",
            "funfleet_canary_inconclusive_windows=1",
            "-e",
            "funfleet_canary_window=4",  # nothing to count: short windows
        ),
        "fewer than 50",
    )
    assert [v for _, v, _, _ in windows] == ["inconclusive", "inconclusive"]
    REPORT["canary: no traffic, aborted"] = summary(windows, seconds, result)


def test_a_judge_that_cannot_read_prometheus_aborts_the_canary_loudly(releases):
    """The deploy's rescue of a failed judge is no silence: Prometheus stopped, the judge's error
    stops the run, and the canary goes back as for an abort, its decision recorded."""
    sh(MONITOR, "systemctl", "stop", "prometheus")
    try:
        result, _, windows = deploy("-e", f"app_release_model_src={releases['quiet']}")
    finally:
        sh(MONITOR, "systemctl", "start", "prometheus")
    assert result.returncode != 0
    assert windows == []
    assert "Canary aborted" in result.stdout, result.stdout[-4000:]
    assert "the judge failed: could not read the window from Prometheus" in result.stdout, result.stdout[-4000:]
    assert release_of(CANARY) == release_of(BASELINE)
    assert "digits-23" not in release_of(CANARY)
    assert sh(CANARY, "test", "-e", "/var/lib/funfleet/share", check=False).returncode != 0
    assert 'decision="abort"' in decision()
    wait_ready()
