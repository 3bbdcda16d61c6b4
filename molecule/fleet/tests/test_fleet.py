"""A balancer and two app hosts after site.yml: balancing, firewalling, and zero failed requests
through rolling deploys, a broken release, a rollback, a stopped uWSGI and a lost host.

The tests run in file order and build on each other's fleet state (v1 -> v2 -> broken v3 ->
rollback to v1 -> failures), as an operator's day would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetcheck import ROOT, Load, address, playbook, predict, sample, sh, wait_ready

testinfra_hosts = ["funfleet-fleet-lb"]  # every test runs once; hosts are reached with docker exec

LB = "funfleet-fleet-lb"
APPS = ["funfleet-fleet-app1", "funfleet-fleet-app2"]
CLIENT = "funfleet-fleet-client"
MODEL_V1 = ROOT / "files" / "models" / "digits" / "1"
REPORT: dict[str, str] = {}


def readyz(container: str) -> dict:
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1/readyz', timeout=5).read().decode())"
    return json.loads(sh(container, "python3", "-c", code).stdout)


def own_metrics(container: str) -> str:
    """An app host's /metrics, read on the host itself (loopback may, the balancer may not)."""
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1/metrics', timeout=5).read().decode())"
    return sh(container, "python3", "-c", code).stdout


def master_pid(container: str) -> str:
    return sh(container, "systemctl", "show", "-p", "MainPID", "--value", "funfleet").stdout.strip()


def lb_state() -> dict[str, str]:
    lines = sh(LB, "funfleet-lb", "status").stdout.split("\n")
    return {line.split()[0]: line.split()[2] for line in lines if line.strip()}


def release_of(container: str) -> str:
    return sh(container, "readlink", "/opt/funfleet/current").stdout.strip().rsplit("/", 1)[1]


def recap(output: str) -> dict[str, tuple[int, int]]:
    """host -> (changed, failed) from the play recap."""
    found = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", output, re.M)
    return {host: (int(changed), int(failed)) for host, changed, failed in found}


def model_release(tmp: Path, version: str, sha256: str | None = None) -> Path:
    """A new model release: the demo model under another version (or with a wrong sha256)."""
    target = tmp / f"digits-{version}"
    shutil.copytree(MODEL_V1, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta["version"] = version
    if sha256:
        meta["sha256"] = sha256
    (target / "metadata.json").write_text(json.dumps(meta, indent=2))
    return target


@pytest.fixture(scope="module", autouse=True)
def ready():
    wait_ready()
    yield
    report = "\n".join(f"{k}: {v}" for k, v in REPORT.items())
    (ROOT / ".cache").mkdir(exist_ok=True)
    (ROOT / ".cache" / "fleet-report.txt").write_text(report + "\n")
    print("\n== fleet report ==\n" + report)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("releases")
    unloadable = model_release(tmp, "4")
    (unloadable / "model.keras").write_bytes(b"not a Keras archive\n")
    meta = json.loads((unloadable / "metadata.json").read_text())
    meta["sha256"] = hashlib.sha256(b"not a Keras archive\n").hexdigest()
    (unloadable / "metadata.json").write_text(json.dumps(meta, indent=2))
    v2 = tmp / "digits-2"  # what `make release FROM=files/models/digits/1 VERSION=2` writes
    cut = [sys.executable, "-m", "inference.release_tools", "cut", str(MODEL_V1), "2", "--out", str(v2)]
    subprocess.run(cut, check=True, capture_output=True, timeout=60)
    return {"v2": v2, "broken": model_release(tmp, "3", sha256="0" * 64), "unloadable": unloadable}


def test_balancer_spreads_requests_over_both_app_hosts():
    seen = {}
    for _ in range(30):
        r = predict("3")
        assert r.status_code == 200
        assert r.json()["best_prediction"] == "3"
        seen[r.headers["X-Served-By"]] = seen.get(r.headers["X-Served-By"], 0) + 1
    assert set(seen) == set(APPS), seen
    assert min(seen.values()) >= 5, seen


def test_balancer_config_names_every_app_host_with_failover():
    site = sh(LB, "cat", "/etc/nginx/sites-enabled/funfleet.conf").stdout
    for app in APPS:
        address = sh(app, "hostname", "-I").stdout.split()[0]
        assert f"server {address}:80 max_fails=1 fail_timeout=10s;  # {app}" in site
    # Retried elsewhere: unreachable, failed, no worker free (503) or drained (403); never a 504 or a
    # 429, at most one more host, and not once 10 s have passed.
    assert "proxy_next_upstream error timeout http_502 http_503 http_403 non_idempotent;" in site
    assert "proxy_next_upstream_tries 2;" in site
    assert "proxy_next_upstream_timeout 10s;" in site
    assert "keepalive 32;" in site
    sh(LB, "nginx", "-t")


def test_the_scenario_inventory_is_bare():
    """The secure defaults below hold with an inventory that only lists hosts, as an operator's
    first one does: no group_vars, no host_vars."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    assert not (inventory / "group_vars").exists()
    assert not (inventory / "host_vars").exists()


def test_app_hosts_take_http_from_the_balancer_only():
    lb_address = sh(LB, "hostname", "-I").stdout.split()[0]
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 80), timeout=3); print('connected')"
    for app in APPS:
        from_lb = sh(LB, "python3", "-c", probe, app, check=False)
        assert from_lb.returncode == 0, from_lb.stderr
        assert from_lb.stdout.strip() == "connected"
        from_client = sh(CLIENT, "python3", "-c", probe, app, check=False)
        assert from_client.returncode == 1
        assert "timed out" in from_client.stderr  # UFW drops, it does not reject
        rules = sh(app, "ufw", "status").stdout
        allowed = [" ".join(line.split()) for line in rules.splitlines() if "ALLOW" in line]
        assert allowed == [f"80/tcp ALLOW {lb_address} # funfleet:http-from-lb-{lb_address}"], rules


def test_steady_state_through_the_balancer():
    """The latency baseline the rollout numbers compare with: the same load, nothing happening."""
    with Load(max_seconds=20) as load:
        time.sleep(20)
    assert load.failures == [], load.summary()
    REPORT["steady state (20 s)"] = load.summary()


# A client on the balancer host sends an upload's headers and half its body to an app host, then
# a byte every 2 s (nginx closes a body idle for client_body_timeout, 10 s) until "go" comes on
# stdin, then the rest, and prints the answer. The balancer may reach the app host (UFW), and no
# balancer buffering sits between: the request is in flight on that host, a slow upload.
SLOW_UPLOAD = r"""
import json, select, socket, sys
host, image = sys.argv[1], sys.stdin.buffer.read(int(sys.argv[2]))
body = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="7.png"\r\n'
        b'Content-Type: image/png\r\n\r\n' + image + b'\r\n--b--\r\n')
head = (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
s = socket.create_connection((host, 80), timeout=90)
sent = len(body) // 2
s.sendall(head + body[:sent])
print("in-flight", flush=True)
for _ in range(90):
    if select.select([sys.stdin], [], [], 2)[0]:
        break
    if sent < len(body) - 1:
        s.sendall(body[sent : sent + 1])
        sent += 1
sys.stdin.readline()
s.sendall(body[sent:])
answer = b""
while chunk := s.recv(65536):
    answer += chunk
status_line, _, rest = answer.partition(b"\r\n")
headers = dict(l.split(": ", 1) for l in rest.split(b"\r\n\r\n")[0].decode().split("\r\n") if ": " in l)
print(json.dumps({"status": int(status_line.split()[1]), "served_by": headers.get("X-Served-By")}))
"""


def test_a_drain_waits_for_the_request_in_flight_which_its_host_answers():
    """The drain's wait really waits: a request in flight on the host when it is drained (an upload
    still arriving) completes with 200 from that host, not as a retry elsewhere, and the drain
    play returns only after it; no rescue says it went ahead all the same."""
    app = APPS[0]
    image = sample("7")
    client = subprocess.Popen(
        ["docker", "exec", "-i", LB, "python3", "-c", SLOW_UPLOAD, address(app), str(len(image))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=False,
    )
    drain = None
    try:
        client.stdin.write(image)
        client.stdin.flush()
        assert client.stdout.readline().strip() == b"in-flight"
        binary = shutil.which("ansible-playbook") or str(Path(sys.executable).with_name("ansible-playbook"))
        inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
        drain = subprocess.Popen(
            [binary, "-i", str(inventory), str(ROOT / "playbooks" / "drain.yml"), "-l", app],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_FORCE_COLOR": "0"},
        )
        for _ in range(240):  # the drain file appears once the play reaches the host (bounded: 120 s)
            if sh(app, "test", "-f", "/var/lib/funfleet/drained", check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the drain play never drained the host")
        time.sleep(5)
        assert drain.poll() is None, (
            "the drain play returned while a request was still in flight:\n" + drain.stdout.read()
        )
        client.stdin.write(b"go\n")
        client.stdin.close()
        answer = json.loads(client.stdout.readline())
        output, _ = drain.communicate(timeout=120)
        assert answer == {"status": 200, "served_by": app}
        assert drain.returncode == 0, output[-3000:]
        assert "FAILED - RETRYING: [" + app + "]: Wait until nginx holds no request" in output, output[-3000:]
        assert "rescued=0" in output
        assert lb_state()[app] == "drained"
    finally:
        client.kill()
        if drain and drain.poll() is None:
            drain.kill()
        undrain = playbook("undrain.yml", "-l", app)  # whatever happened: the tests after need both hosts
    assert undrain.returncode == 0, undrain.stdout[-3000:]
    assert lb_state() == dict.fromkeys(APPS, "serving")


def test_rolling_deploy_of_a_new_model_version_drops_nothing(releases):
    before = {app: release_of(app) for app in APPS}
    started = time.monotonic()
    with Load() as load:
        result = playbook("deploy.yml", "-e", f"app_release_model_src={releases['v2']}")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:]
    assert load.failures == [], load.summary()
    assert load.ok >= 100, load.summary()
    assert set(load.served_by) == set(APPS), load.summary()  # each host served while the other was drained
    assert set(load.versions) == {"1", "2"}, load.summary()
    for app in APPS:
        body = readyz(app)
        assert body["version"] == "2"
        assert body["release"] == release_of(app) != before[app]
        assert body["release"].startswith("digits-2-")
    assert lb_state() == dict.fromkeys(APPS, "serving")
    for app in APPS:  # each host was restarted (drained): its metrics say v1 is gone, v2 ready
        ready = {
            labels: float(value)
            for labels, value in re.findall(r"^funfleet_model_ready\{([^}]*)\} (\S+)$", own_metrics(app), re.M)
        }
        assert ready == {'model="digits",version="1"': 0.0, 'model="digits",version="2"': 1.0}, ready
    REPORT["rolling deploy v1->v2"] = (
        f"{took:.1f}s for {len(APPS)} hosts ({took / len(APPS):.1f}s/host); {load.summary()}"
    )


def test_deploying_the_same_release_again_changes_nothing(releases):
    pids = {app: master_pid(app) for app in APPS}
    lb_workers = sh(LB, "pgrep", "-f", "nginx: worker process").stdout.split()
    result = playbook("deploy.yml", "-e", f"app_release_model_src={releases['v2']}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result.stdout) == {LB: (0, 0), **{app: (0, 0) for app in APPS}}, result.stdout[-2000:]
    assert {app: master_pid(app) for app in APPS} == pids  # no restart, no reload
    assert sh(LB, "pgrep", "-f", "nginx: worker process").stdout.split() == lb_workers  # no nginx reload


def test_release_failing_its_sha256_stops_the_rollout_before_any_drain(releases):
    before = {app: release_of(app) for app in APPS}
    pids = {app: master_pid(app) for app in APPS}
    with Load() as load:
        result = playbook("deploy.yml", "-e", f"app_release_model_src={releases['broken']}")
    assert result.returncode == 2, result.stdout[-3000:]
    first, second = APPS
    words = " ".join((result.stdout + result.stderr).split())  # failures may go to stderr
    assert re.search(rf"Deploy of digits-3-\w+ failed on {first} ", words), words[-3000:]
    assert "Refuse a model whose sha256 does not match its metadata" in words
    assert "sha256 mismatch" in words
    assert f"The host still serves {before[first]} and was not drained" in words
    assert recap(result.stdout)[first][1] == 1
    # The rollout stopped before the second batch: only the facts play touched the second host.
    assert recap(result.stdout)[second] == (0, 0)
    # Nothing was drained or restarted, and the shipped release is gone.
    assert lb_state() == dict.fromkeys(APPS, "serving")
    assert {app: master_pid(app) for app in APPS} == pids
    assert {app: release_of(app) for app in APPS} == before
    assert not any(r.startswith("digits-3-") for r in sh(first, "ls", "/opt/funfleet/releases").stdout.split())
    assert load.failures == [], load.summary()
    REPORT["release failing its sha256"] = load.summary()


def test_release_that_does_not_load_goes_back_and_stays_drained(releases):
    """A failure after the drain (the model passes its sha256 but cannot be loaded): the host
    goes back to its release, serves it, stays out of rotation, and the rollout stops."""
    before = {app: release_of(app) for app in APPS}
    pids = {app: master_pid(app) for app in APPS}
    with Load() as load:
        result = playbook(
            "deploy.yml", "-e", f"app_release_model_src={releases['unloadable']}", "-e", "uwsgi_ready_timeout=40"
        )
    assert result.returncode == 2, result.stdout[-3000:]
    first, second = APPS
    words = " ".join((result.stdout + result.stderr).split())
    assert re.search(rf"Deploy of digits-4-\w+ failed on {first} ", words), words[-3000:]
    assert "the workers could not load the release" in words  # funfleet-ready stops at once, with the reason
    assert f"The host is back on {before[first]} and stays drained" in words
    assert release_of(first) == before[first]
    # Drained, so its nginx answers 403: ask uWSGI itself, with the deploy's own readiness check.
    serving = sh(
        first,
        "funfleet-ready",
        "--stats",
        "/run/funfleet/stats.sock",
        "--socket",
        "/run/funfleet/app.sock",
        "--release",
        before[first],
        "--timeout",
        "20",
        check=False,
    )
    assert serving.returncode == 0, serving.stderr
    assert not any(r.startswith("digits-4-") for r in sh(first, "ls", "/opt/funfleet/releases").stdout.split())
    assert lb_state() == {first: "drained", second: "serving"}
    assert master_pid(second) == pids[second]
    assert release_of(second) == before[second]
    assert load.failures == [], load.summary()
    assert set(load.served_by) <= set(APPS)
    REPORT["release that does not load"] = load.summary()


def test_rollback_returns_every_host_to_the_previous_version():
    with Load() as load:
        result = playbook("rollback.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    for app in APPS:
        body = readyz(app)
        assert body["version"] == "1", (app, body)
        assert body["release"].startswith("digits-1-")
        assert release_of(app) == body["release"]
    assert lb_state() == dict.fromkeys(APPS, "serving")
    assert load.failures == [], load.summary()
    assert load.ok >= 50, load.summary()
    REPORT["rollback v2->v1"] = load.summary()


def test_a_batch_of_every_host_stays_in_service_and_chain_reloads(releases):
    """With no host left outside the batch to take the traffic (here serial 100%; likewise a
    single app host behind a balancer), no host is drained: each chain-reloads in service."""
    pids = {app: master_pid(app) for app in APPS}
    with Load() as load:
        result = playbook("deploy.yml", "-e", f"app_release_model_src={releases['v2']}", "-e", "funfleet_serial=100%")
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"TASK \[nginx : Mark the host drained\][^\n]*\n(skipping: \[\S+\]\n)+", result.stdout), (
        result.stdout[-3000:]
    )
    for app in APPS:
        assert readyz(app)["version"] == "2"
    assert {app: master_pid(app) for app in APPS} == pids  # a chain reload keeps the master
    assert lb_state() == dict.fromkeys(APPS, "serving")
    assert load.failures == [], load.summary()
    assert set(load.served_by) == set(APPS), load.summary()
    REPORT["every host in one batch (chain reload, no drain)"] = load.summary()


def test_stopping_uwsgi_on_one_host_under_load_drops_nothing():
    victim, survivor = APPS
    with Load(max_seconds=120) as load:
        time.sleep(3)
        sh(victim, "systemctl", "stop", "funfleet")
        time.sleep(8)
        sh(victim, "systemctl", "start", "funfleet", timeout=150)
        time.sleep(3)
    assert load.failures == [], load.summary()
    assert load.served_by[survivor] > 0
    wait_ready()
    REPORT["uwsgi stopped on one host"] = load.summary()


def test_losing_an_app_host_under_load_drops_nothing():
    victim, survivor = APPS
    with Load(max_seconds=180) as load:
        time.sleep(3)
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True, timeout=60)
        time.sleep(15)
    assert load.failures == [], load.summary()
    after = [predict("0").headers["X-Served-By"] for _ in range(10)]
    assert after == [survivor] * 10
    REPORT["app host killed"] = load.summary()
