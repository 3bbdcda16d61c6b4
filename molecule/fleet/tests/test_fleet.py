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
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetcheck import ROOT, Load, address, background_playbook, playbook, predict, sample, sh, wait_ready

testinfra_hosts = ["funfleet-fleet-lb"]  # every test runs once; hosts are reached with docker exec

LB = "funfleet-fleet-lb"
APPS = ["funfleet-fleet-app1", "funfleet-fleet-app2"]
CLIENT = "funfleet-fleet-client"
MONITOR = "funfleet-fleet-monitor"
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


def workers_serve(container: str, release: str, timeout: int) -> subprocess.CompletedProcess:
    """The deploy's own readiness check on the host (uWSGI asked directly: a drained host's nginx
    answers 403): 0 once every worker serves the release, within timeout seconds."""
    argv = ["--stats", "/run/funfleet/stats.sock", "--socket", "/run/funfleet/app.sock", "--release", release]
    return sh(container, "funfleet-ready", *argv, "--timeout", str(timeout), check=False, timeout=timeout + 30)


def watch_switch(container: str) -> subprocess.Popen:
    """Prints "switched" the moment the host's `current` link leaves the release it points at now
    (read on the host every 20 ms, for 240 s at most)."""
    before = sh(container, "readlink", "/opt/funfleet/current").stdout.strip()
    watch = (
        f'for i in $(seq 12000); do [ "$(readlink /opt/funfleet/current)" != "{before}" ] '
        "&& echo switched && exit 0; sleep 0.02; done; exit 1"
    )
    return subprocess.Popen(["docker", "exec", container, "sh", "-c", watch], stdout=subprocess.PIPE, text=True)


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
    v5 = tmp / "digits-5"
    subprocess.run([*cut[:-3], "5", "--out", str(v5)], check=True, capture_output=True, timeout=60)
    return {"v2": v2, "v5": v5, "broken": model_release(tmp, "3", sha256="0" * 64), "unloadable": unloadable}


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
    first one does: no group_vars, no host_vars. (The monitoring host's own scrape interval, 2 s
    so that canary windows last seconds, is the one setting, beside it in molecule.yml.)"""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    assert not (inventory / "group_vars").exists()
    assert not (inventory / "host_vars").exists()


def test_app_hosts_take_http_from_the_balancer_only():
    """Clients reach the app hosts through the balancer only; the monitoring host reads /metrics
    and the exporters, and nobody else reaches anything."""
    lb_address = sh(LB, "hostname", "-I").stdout.split()[0]
    monitor = sh(MONITOR, "hostname", "-I").stdout.split()[0]
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
        assert allowed == [
            f"80/tcp ALLOW {lb_address} # funfleet:http-from-lb-{lb_address}",
            f"80/tcp ALLOW {monitor} # funfleet:http-from-monitoring-{monitor}",
            f"9100/tcp ALLOW {monitor} # funfleet:node-exporter-{monitor}",
            f"9113/tcp ALLOW {monitor} # funfleet:nginx-exporter-{monitor}",
        ], rules


def test_app_hosts_fetched_wheels_and_model_files_from_the_balancer_which_only_they_reach():
    """The balancer is the fleet's artifact source: the controller sent it each wheel and model
    file once, and each app host fetched them from it (their own copy of the wheelhouse never
    existed), over a port UFW opens to the app hosts only, and nginx serves to them only."""
    log = sh(LB, "cat", "/var/log/nginx/funfleet-artifacts.log").stdout.splitlines()
    model_sha = json.loads((MODEL_V1 / "metadata.json").read_text())["sha256"]
    for app in APPS:
        mine = [line for line in log if line.startswith(address(app) + " ")]
        wheels = [line for line in mine if re.search(r'"GET /wheels/[^ ]+\.whl HTTP/1\.1" 200 ', line)]
        assert len(wheels) > 20, mine[:5]
        assert any(f'"GET /models/{model_sha} HTTP/1.1" 200 ' in line for line in mine), mine[-5:]
        assert sh(app, "test", "-e", "/var/cache/funfleet/wheelhouse", check=False).returncode == 1
        locks = sh(app, "sh", "-c", "cat /opt/funfleet/venvs/*/requirements.sha256.txt").stdout
        assert re.search(r"^flask==[\w.]+ --hash=sha256:[0-9a-f]{64}$", locks, re.M), locks
    assert sh(LB, "test", "-f", f"/srv/funfleet-artifacts/models/{model_sha}", check=False).returncode == 0
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 8070), timeout=3); print('connected')"
    for app in APPS:
        assert sh(app, "python3", "-c", probe, LB).stdout.strip() == "connected"
    for other in (CLIENT, MONITOR):
        refused = sh(other, "python3", "-c", probe, LB, check=False)
        assert refused.returncode == 1
        assert "timed out" in refused.stderr  # UFW drops
    rules = [" ".join(line.split()) for line in sh(LB, "ufw", "status").stdout.splitlines() if "8070" in line]
    assert sorted(rules) == sorted(
        f"8070/tcp ALLOW {address(app)} # funfleet:artifacts-from-app-{address(app)}" for app in APPS
    )
    # nginx's own allow list, which holds with the firewall off: the balancer's own address (which
    # UFW lets in over the loopback) gets a 403, an app host the listing.
    get = (
        "import sys, urllib.error, urllib.request\n"
        "try: print(urllib.request.urlopen(f'http://{sys.argv[1]}:8070/wheels/', timeout=5).status)\n"
        "except urllib.error.HTTPError as exc: print(exc.code)"
    )
    assert sh(LB, "python3", "-c", get, address(LB)).stdout.strip() == "403"
    assert sh(APPS[0], "python3", "-c", get, address(LB)).stdout.strip() == "200"


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
        drain = background_playbook("drain.yml", "-l", app, "-e", "funfleet_drain_reason=test")
        for _ in range(240):  # the drain file appears once the play reaches the host (bounded: 120 s)
            if sh(app, "test", "-f", "/var/lib/funfleet/drained", check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the drain play never drained the host")
        # Meanwhile a second operator's deploy meets the drain's lock, and changes nothing.
        second = playbook("deploy.yml")
        assert second.returncode == 2, second.stdout[-3000:]
        words = " ".join((second.stdout + second.stderr).split())
        assert re.search(r"The fleet is locked by drain of \S+@\S+ \(pid \d+\) since \S+", words), words[-3000:]
        assert "This run stopped before any rollout step." in words
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
    with Load(rate=None) as load:  # the one deploy under back-to-back load: both cores busy serving
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
    """Every app host receives and checks the release at once, while it serves: each one refuses
    the bad sha256, so the rollout stops with no host drained, switched or restarted."""
    before = {app: release_of(app) for app in APPS}
    pids = {app: master_pid(app) for app in APPS}
    with Load() as load:
        result = playbook("deploy.yml", "-e", f"app_release_model_src={releases['broken']}")
    assert result.returncode == 2, result.stdout[-3000:]
    words = " ".join((result.stdout + result.stderr).split())  # failures may go to stderr
    # Each host fetched the model file from the balancer (the fleet's artifact source), which
    # checked it against the metadata's sha256 on arrival and kept nothing.
    assert "Fetch the model files from the artifact source" in words
    assert f"did not match {'0' * 64}; it was " in words
    for app in APPS:
        assert re.search(rf"Deploy of digits-3-\w+ failed on {app} ", words), words[-3000:]
        assert f"The host still serves {before[app]} and was not drained" in words
        assert recap(result.stdout)[app][1] == 1
    assert "PLAY [Roll the release out, a batch at a time]" not in result.stdout  # never started
    # Nothing was drained or restarted, and the shipped release is gone from every host.
    assert lb_state() == dict.fromkeys(APPS, "serving")
    assert {app: master_pid(app) for app in APPS} == pids
    assert {app: release_of(app) for app in APPS} == before
    for app in APPS:
        shipped = sh(app, "ls", "/opt/funfleet/releases").stdout.split()
        assert not any(r.startswith("digits-3-") for r in shipped), shipped
    assert load.failures == [], load.summary()
    REPORT["release failing its sha256"] = load.summary()


def test_a_released_version_changed_since_is_refused_before_anything_is_shipped(releases, tmp_path):
    """Version 2 was released (the rolling deploy above recorded its sha256 in the controller's
    ledger). Its model file is then replaced and its metadata rewritten to match: the sha256 would
    agree on every host, but the controller's record does not, so nothing is shipped or drained."""
    ledger = json.loads((Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent / "released-models.json").read_text())
    released = json.loads((releases["v2"] / "metadata.json").read_text())["sha256"]
    assert ledger["digits"]["2"] == released
    tampered = tmp_path / "digits-2"
    shutil.copytree(releases["v2"], tampered)
    model = tampered / "model.keras"
    model.write_bytes(model.read_bytes() + b"\0" * 64)
    meta = json.loads((tampered / "metadata.json").read_text())
    meta["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    (tampered / "metadata.json").write_text(json.dumps(meta, indent=2))
    pids = {app: master_pid(app) for app in APPS}
    result = playbook("deploy.yml", "-e", f"app_release_model_src={tampered}")
    words = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, words[-3000:]
    assert f"digits:2 was released with sha256 {released}, and its metadata now says {meta['sha256']}" in words
    assert "A released version never changes" in words
    assert lb_state() == dict.fromkeys(APPS, "serving")
    assert {app: master_pid(app) for app in APPS} == pids


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
    # The sha256 run before this one failed, so its lock stayed; its process is gone, so this run
    # (same controller) took the lock over and said so.
    assert re.search(r"Took over the fleet lock from deploy of \S+ \(pid \d+, since \S+\): that run is gone", words), (
        words[-3000:]
    )
    assert release_of(first) == before[first]
    # Drained, so its nginx answers 403: ask uWSGI itself, with the deploy's own readiness check.
    serving = workers_serve(first, before[first], 20)
    assert serving.returncode == 0, serving.stderr
    assert not any(r.startswith("digits-4-") for r in sh(first, "ls", "/opt/funfleet/releases").stdout.split())
    assert lb_state() == {first: "drained", second: "serving"}
    assert drain_record(first) == {"by": "rollout", "reason": "deploy"}  # what `funfleet-lb status` shows
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


def drain_record(container: str) -> dict | None:
    found = sh(container, "cat", "/var/lib/funfleet/drained", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def test_another_controllers_lock_stops_a_run_until_broken_by_hand():
    """A lock this controller cannot check (another controller's run) stops every operation, with
    its holder named, until -e funfleet_lock_break=true takes it."""
    first, second = APPS
    record = {
        "run": "ops-laptop:4242:1",
        "operation": "deploy",
        "user": "alice",
        "controller": "ops-laptop",
        "pid": 4242,
        "since": "2026-12-01T08:00:00Z",
    }
    sh(first, "sh", "-c", f"printf '%s\\n' '{json.dumps(record)}' > /var/lib/funfleet/operation.lock")
    refused = playbook("undrain.yml", "-l", second)
    words = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2, words[-3000:]
    assert "The fleet is locked by deploy of alice@ops-laptop (pid 4242) since 2026-12-01T08:00:00Z" in words
    assert "-e funfleet_lock_break=true" in words
    broken = playbook("undrain.yml", "-l", second, "-e", "funfleet_lock_break=true")
    words = " ".join((broken.stdout + broken.stderr).split())
    assert broken.returncode == 0, words[-3000:]
    assert "Took over the fleet lock from deploy of alice@ops-laptop (pid 4242" in words
    assert sh(first, "test", "-e", "/var/lib/funfleet/operation.lock", check=False).returncode == 1  # released


def test_a_host_drained_by_hand_stays_drained_through_a_deploy_and_a_reboot(releases):
    """An operator drains app2 with a reason. A deploy then counts it out of service: app1, the only
    host serving, chain-reloads in service (no drain: nothing would be left to take the requests);
    app2 is switched out of rotation and stays drained, reason and all. A reboot keeps it drained.
    Draining app1 too is refused; undrain.yml is the way back."""
    second = APPS[1]
    drained = playbook("drain.yml", "-l", second, "-e", json.dumps({"funfleet_drain_reason": "disk swap"}))
    assert drained.returncode == 0, drained.stdout[-3000:]
    try:
        drained_by_hand_through_a_deploy_and_a_reboot(releases)
    finally:
        back = playbook("undrain.yml", "-l", second)  # whatever happened: the tests after need both hosts
    assert back.returncode == 0, back.stdout[-3000:]
    assert lb_state() == dict.fromkeys(APPS, "serving")


def drained_by_hand_through_a_deploy_and_a_reboot(releases) -> None:
    first, second = APPS
    assert drain_record(second) == {"by": "operator", "reason": "disk swap"}
    pids = {app: master_pid(app) for app in APPS}
    with Load() as load:
        result = playbook("deploy.yml", "-e", f"app_release_model_src={releases['v2']}")
    words = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0, words[-3000:]
    assert load.failures == [], load.summary()
    assert set(load.served_by) == {first}, load.summary()
    assert master_pid(first) == pids[first]  # chain reload: the master stays
    assert master_pid(second) != pids[second]  # restart, out of rotation
    assert f"{second} runs digits-2-" in words
    assert "stays drained, as an operator left it (disk swap)" in words
    assert drain_record(second) == {"by": "operator", "reason": "disk swap"}
    assert lb_state() == {first: "serving", second: "drained"}
    assert release_of(first) == release_of(second)
    REPORT["deploy with a host drained by hand (chain reload of the other)"] = load.summary()

    subprocess.run(["docker", "restart", second], check=True, capture_output=True, timeout=120)
    serving = workers_serve(second, release_of(second), 120)
    assert serving.returncode == 0, serving.stderr  # its app came back by itself, on its release
    assert drain_record(second) == {"by": "operator", "reason": "disk swap"}
    assert lb_state() == {first: "serving", second: "drained"}

    refused = playbook("drain.yml", "-l", first, "-e", "funfleet_drain_reason=oops")
    words = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2, words[-3000:]
    assert f"Draining {first} would leave 2 of 2 app hosts out of rotation" in words
    assert "no app host serving" in words
    assert drain_record(first) is None


def test_a_failed_deploy_of_the_previous_release_keeps_it_to_roll_back_to():
    """app1 runs v2 with v1 as `previous`. A deploy of that very release fails (its model file was
    damaged on the host): app1 goes back to v2, and `previous` still points at v1, still there."""
    first = APPS[0]
    current, previous = release_of(first), sh(first, "readlink", "/opt/funfleet/previous").stdout.strip()
    previous_id = previous.rsplit("/", 1)[1]
    model = sh(first, "sh", "-c", f"ls {previous}/model/digits/*/model.keras").stdout.split()[0]
    original = subprocess.run(
        ["docker", "exec", first, "cat", model], check=True, capture_output=True, timeout=60
    ).stdout
    sh(first, "sh", "-c", f"echo damaged > {model}")
    try:
        with Load() as load:
            result = playbook(
                "deploy.yml", "-e", f"app_release_id={previous_id}", "-e", f"app_release_model_src={MODEL_V1}"
            )
        words = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 2, words[-3000:]
        assert f"Deploy of {previous_id} failed on {first}" in words
        assert release_of(first) == current
        assert sh(first, "readlink", "/opt/funfleet/previous").stdout.strip() == previous
        assert sh(first, "test", "-f", f"{previous}/release.json", check=False).returncode == 0
        assert load.failures == [], load.summary()
    finally:
        subprocess.run(
            ["docker", "exec", "-i", first, "sh", "-c", f"cat > {model}"],
            input=original,
            check=True,
            capture_output=True,
            timeout=60,
        )
    assert lb_state()[first] == "drained"  # a failure after the drain leaves it out; the next run puts it back


def test_a_deploy_interrupted_after_its_switch_converges_on_the_next_run(tmp_path):
    """Ctrl-C (SIGINT to ansible-playbook's process group) the moment app1's `current` has switched,
    before its workers serve the release; the controller's packed app code is then cut short, as a
    full disk leaves it. The same deploy run again, under load: app1 is found mid-switch and cycled,
    the archive packed again, every host on the release, serving and undrained; clients lost nothing."""
    first = APPS[0]
    cache = tmp_path / "build-cache"  # the controller's packed app code for these two runs
    deploy = ["-e", f"app_release_model_src={MODEL_V1}", "-e", f"app_release_build_cache={cache}"]
    with Load() as load:
        watcher = watch_switch(first)
        run = background_playbook("deploy.yml", *deploy)
        try:
            assert watcher.stdout.readline().strip() == "switched", "the deploy never switched " + first
            os.killpg(run.pid, signal.SIGINT)
            interrupted, _ = run.communicate(timeout=120)
        finally:
            watcher.kill()
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
        assert run.returncode != 0, interrupted[-3000:]
        target = release_of(first)
        stale = workers_serve(first, target, 0)
        assert stale.returncode == 1, "the run was not stopped between the switch and the restart"
        (archive,) = cache.glob("app-*.tar.gz")
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
        again = playbook("deploy.yml", *deploy)
    words = " ".join((again.stdout + again.stderr).split())
    assert again.returncode == 0, words[-3000:]
    assert "that run is gone" in words  # the interrupted run's lock, taken over
    assert f"The current release of {first} is {target}, but its workers do not serve it" in words
    subprocess.run(["gzip", "-t", str(archive)], check=True, timeout=60)  # packed again, whole
    for app in APPS:
        assert readyz(app)["version"] == "1"
        assert readyz(app)["release"] == release_of(app) == target
    assert lb_state() == dict.fromkeys(APPS, "serving")
    assert load.failures == [], load.summary()
    REPORT["deploy interrupted after a switch, then run again"] = load.summary()


def test_the_workers_cannot_open_outbound_connections():
    """The unit allows the app no IP traffic but loopback. Where the host runs the unified cgroup
    hierarchy (cgroup v2, which systemd needs to enforce it: Debian 12, Ubuntu 22.04 and later), a
    process in the service's control group cannot reach the balancer, which the host itself can;
    on a cgroup v1 host (these test hosts when Docker runs cgroup v1) only the unit's setting is checked."""
    app = APPS[0]
    unit = sh(app, "systemctl", "show", "funfleet", "-p", "IPAddressDeny", "-p", "IPAddressAllow").stdout
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    assert set(settings["IPAddressDeny"].split()) == {"0.0.0.0/0", "::/0"}, unit
    assert set(settings["IPAddressAllow"].split()) == {"127.0.0.0/8", "::1/128"}, unit
    if sh(app, "stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip() != "cgroup2fs":
        REPORT["outbound block"] = "unit setting checked; not enforced on these cgroup v1 test hosts"
        return
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 80), timeout=3); print('connected')"
    lb = address(LB)
    assert sh(app, "python3", "-c", probe, lb).stdout.strip() == "connected"
    pid = master_pid(app)
    group = next(
        line[3:] for line in sh(app, "cat", f"/proc/{pid}/cgroup").stdout.splitlines() if line.startswith("0::")
    )
    inside = sh(
        app,
        "sh",
        "-c",
        f'echo $$ > /sys/fs/cgroup{group}/cgroup.procs && exec python3 -c "$0" "$1"',
        probe,
        lb,
        check=False,
    )
    assert inside.returncode == 1, inside.stdout + inside.stderr
    assert "Operation not permitted" in inside.stderr or "PermissionError" in inside.stderr, inside.stderr
    REPORT["outbound block"] = "enforced: a process in the unit's cgroup could not reach the balancer"


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


def test_a_down_balancer_does_not_block_a_rollback_and_comes_back_by_itself():
    """With the balancer stopped, a rollback of the app hosts still goes through (the run says so,
    and ends non-zero with the balancer named); started again (a reboot), it serves by itself."""
    subprocess.run(["docker", "stop", LB], check=True, capture_output=True, timeout=120)
    try:
        result = playbook("rollback.yml")
    finally:
        subprocess.run(["docker", "start", LB], check=True, capture_output=True, timeout=120)
    # Non-zero, naming the balancer (rc 4, unreachable, over SSH; 2, failed, through docker exec).
    assert result.returncode in (2, 4), result.stdout[-3000:]
    lb_recap = re.search(rf"^{LB}\s+: ok=\d+\s+changed=0\s+unreachable=(\d+)\s+failed=(\d+)", result.stdout, re.M)
    assert lb_recap, result.stdout[-2000:]
    assert int(lb_recap[1]) + int(lb_recap[2]) == 1, result.stdout[-2000:]
    words = " ".join(result.stdout.split())
    assert f"{LB} cannot be reached: the rollout goes on without it" in words, words[-3000:]
    assert all(recap(result.stdout)[app][1] == 0 for app in APPS), result.stdout[-2000:]
    for app in APPS:
        assert readyz(app)["version"] == "2"
    wait_ready()
    assert lb_state() == dict.fromkeys(APPS, "serving")
    with Load(max_seconds=10) as load:
        time.sleep(10)
    assert load.failures == [], load.summary()
    assert set(load.served_by) == set(APPS), load.summary()


def test_losing_an_app_host_mid_switch_under_load_then_its_reboot_converge(releases):
    """A deploy loses app2 (killed) the moment its `current` has switched, before its restart: the
    clients lose nothing (app1 serves), and the run fails on the lost host. Started again (a
    reboot), app2 comes back by itself, drained as the run left it; the same deploy run again puts
    it back into rotation on the release, and the balancer uses both hosts again."""
    survivor, victim = APPS
    deploy = f"app_release_model_src={releases['v5']}"  # a version no host has had: every host switches
    with Load(max_seconds=400) as load:
        watcher = watch_switch(victim)
        run = background_playbook("deploy.yml", "-e", deploy)
        try:
            assert watcher.stdout.readline().strip() == "switched", "the deploy never switched " + victim
            subprocess.run(["docker", "kill", victim], check=True, capture_output=True, timeout=60)
            lost, _ = run.communicate(timeout=300)
        finally:
            watcher.kill()
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
        assert run.returncode != 0, lost[-3000:]
        after = [predict("0").headers["X-Served-By"] for _ in range(10)]
        assert after == [survivor] * 10
        subprocess.run(["docker", "start", victim], check=True, capture_output=True, timeout=120)
        again = playbook("deploy.yml", "-e", deploy)
        for _ in range(60):  # bounded: 30 s, for the balancer's next try of the host
            if load.served_by[victim] > 0:
                break
            time.sleep(0.5)
    words = " ".join((again.stdout + again.stderr).split())
    assert again.returncode == 0, words[-3000:]
    assert release_of(victim) == release_of(survivor)
    assert lb_state() == dict.fromkeys(APPS, "serving")
    assert load.failures == [], load.summary()
    assert load.served_by[victim] > 0, load.summary()
    REPORT["app host lost mid-switch, rebooted, deploy run again"] = load.summary()
