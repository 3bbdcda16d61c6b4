"""One all-in-one host after site.yml: services, socket, listeners, UFW, nginx, real predictions."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time

import pytest
import requests

from fleetcheck import BASE, ROOT, predict, wait_ready
from helpers import counter

SERVICE = "funfleet"


@pytest.fixture(scope="module", autouse=True)
def ready():
    return wait_ready()


def test_services_active_and_enabled(host):
    for name in ("nginx", SERVICE):
        service = host.service(name)
        assert service.is_running, name
        assert service.is_enabled, name


def test_app_runs_as_its_own_user(host):
    user = host.user("funfleet")
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000
    procs = host.process.filter(comm="uwsgi")
    assert len(procs) == 3  # master + 2 workers (uwsgi_processes: 2 in the local inventory)
    assert {p.user for p in procs} == {"funfleet"}


def test_socket_owner_and_mode(host):
    sock = host.file("/run/funfleet/app.sock")
    assert sock.is_socket
    assert sock.user == "funfleet"
    assert sock.group == "funfleet"
    assert sock.mode == 0o660
    run_dir = host.file("/run/funfleet")
    assert run_dir.mode == 0o750
    assert "funfleet" in host.user("www-data").groups


def test_only_nginx_and_sshd_listen_on_public_addresses(host):
    out = host.check_output("ss -Hltnp")
    public = []
    for line in out.splitlines():
        local = line.split()[3]
        addr, port = local.rsplit(":", 1)
        if addr.strip("[]") not in ("127.0.0.1", "::1") and not addr.startswith("127."):
            public.append((port, re.search(r'users:\(\("([^"]+)"', line).group(1)))
    # sshd is the host's own (the scenario reaches it over SSH), not the stack's.
    assert sorted(set(public)) == [("22", "sshd"), ("80", "nginx")]
    assert "127.0.0.1:8081" in out  # stub_status, local only


def test_ufw_has_exactly_the_expected_rules(host):
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "Default: deny (incoming), allow (outgoing), deny (routed)" in status
    added = [line for line in host.check_output("ufw show added").splitlines() if line.startswith("ufw ")]
    # No certificate here, so no 443: a port opens only where its service is. SSH from the
    # admin networks only (the scenario's ufw_ssh_admin_networks), trusted: not rate-limited, so a
    # controller without SSH multiplexing is not locked out (only "any" is, ufw_ssh_limit).
    assert sorted(added) == sorted(
        [
            "ufw allow 80/tcp comment 'funfleet:http'",
            "ufw allow from 172.16.0.0/12 to any port 22 proto tcp comment 'funfleet:ssh-172.16.0.0/12'",
            "ufw allow from 192.168.0.0/16 to any port 22 proto tcp comment 'funfleet:ssh-192.168.0.0/16'",
        ]
    )
    assert "2222" not in status  # the unmanaged rule left by prepare is gone


def probe_blocked(port: int) -> bool:
    """True when a request to 127.0.0.1:port gets no HTTP answer (dropped, reset or timed out)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return conn.recv(1) == b""
    except OSError:
        return True


def test_ufw_really_drops_what_it_does_not_allow(host):
    host.run("systemd-run --unit=probe-listener python3 -m http.server 9999 --bind 0.0.0.0")
    try:
        time.sleep(1)
        assert (
            host.run(
                "python3 -c \"import urllib.request;urllib.request.urlopen('http://127.0.0.1:9999/', timeout=3)\""
            ).rc
            == 0
        )
        port = int(os.environ.get("FUNFLEET_BLOCKED_PORT", "18099"))
        # The published port reaches the host's eth0, where UFW drops it: no answer at all.
        assert probe_blocked(port)
    finally:
        host.run("systemctl stop probe-listener")


def test_unit_bounds_memory_and_tasks_from_the_worker_count(host):
    unit = host.file(f"/etc/systemd/system/{SERVICE}.service").content_string.splitlines()
    assert "MemoryMax=5632M" in unit  # 2 workers x (2048 MiB reload-on-rss + 512) + 512 for the master
    assert "TasksMax=320" in unit  # 2 x 128 + 64


def test_nginx_config_is_not_world_readable(host):
    for path in (
        "/etc/nginx/sites-available/funfleet.conf",
        "/etc/nginx/conf.d/funfleet-http.conf",
        "/etc/nginx/snippets/funfleet-listen.conf",
    ):
        config = host.file(path)
        assert (config.user, config.group, config.mode) == ("root", "root", 0o640), path


def test_uwsgi_runs_the_shared_base_ini(host):
    """The host runs the same base.ini as the app's tests, serve-app and the benchmark."""
    base = host.file("/etc/funfleet/base.ini")
    shipped = (ROOT / "roles" / "uwsgi" / "files" / "base.ini").read_bytes()
    assert base.sha256sum == hashlib.sha256(shipped).hexdigest()
    assert (base.user, base.group, base.mode) == ("root", SERVICE, 0o640)
    ini = host.file("/etc/funfleet/uwsgi.ini").content_string.splitlines()
    lines = [line for line in ini if "=" in line and not line.startswith(("#", ";"))]
    assert lines[0] == "ini = /etc/funfleet/base.ini"


def test_drain_file_takes_the_host_out_of_rotation(host):
    """What a deploy does to a host behind balancers: new requests get a JSON 403 "draining"
    (balancers retry those elsewhere), liveness still answers, and removing the file ends it."""
    host.run("mkdir -p /var/lib/funfleet && touch /var/lib/funfleet/drained")
    try:
        drained = predict("4")
        assert drained.status_code == 403
        assert drained.headers["Content-Type"] == "application/json"
        assert drained.json() == {"error": "this host is out of rotation", "code": "draining", "status": 403}
        assert requests.get(f"{BASE}/readyz", timeout=5).status_code == 403
        assert requests.get(f"{BASE}/healthz", timeout=5).status_code == 200
    finally:
        host.run("rm -f /var/lib/funfleet/drained")
    back = predict("4")
    assert back.status_code == 200
    assert back.json()["best_prediction"] == "4"


def test_nginx_config(host):
    assert host.run("nginx -t").rc == 0
    dump = host.check_output("nginx -T 2>/dev/null")
    # funfleet_request_body_mb: the same limit as the app's own (FUNFLEET_MAX_CONTENT_LENGTH).
    assert re.findall(r"client_max_body_size\s+(\S+);", dump) == ["8m"]
    assert "server_tokens off;" in dump
    assert not host.file("/etc/nginx/sites-enabled/default").exists


@pytest.mark.parametrize("label", [str(i) for i in range(10)])
def test_held_out_digits_through_nginx(label):
    response = predict(label)
    assert response.status_code == 200
    assert response.json()["best_prediction"] == label
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Server" not in response.headers or response.headers["Server"] == "nginx"


def test_oversized_upload_is_413_json_from_nginx():
    response = requests.post(f"{BASE}/predict", files={"image": ("big.png", b"\0" * (9 * 1024 * 1024))}, timeout=30)
    assert response.status_code == 413
    assert response.json() == {"error": "request body larger than 8m", "code": "request_too_large", "status": 413}


def test_non_image_is_415():
    response = requests.post(f"{BASE}/predict", files={"image": ("x.png", b"definitely not a png")}, timeout=10)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media"


def test_readyz_and_metrics_count_requests(host):
    body = requests.get(f"{BASE}/readyz", timeout=5).json()
    current = host.file("/opt/funfleet/current").linked_to.rsplit("/", 1)[1]
    # The local inventory declares two models: digits (the default) and iris.
    assert current.startswith("digits-1+iris-1-")
    assert body == {
        "status": "ready",
        "model": "digits",
        "version": "1",
        "device": "/device:CPU:0",
        "release": current,
        "models": [
            {"name": "digits", "versions": ["1"], "input": "image", "task": "classification"},
            {
                "name": "iris",
                "versions": ["1"],
                "input": "tensor",
                "task": "classification",
                "features": body["models"][1].get("features"),
            },
        ],
    }
    assert body["models"][1]["features"] == ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
    key = dict(endpoint="/predict", method="POST", status="200")

    def metrics() -> str:  # from the host itself: /metrics is for loopback and the monitoring hosts
        return host.check_output(
            "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1/metrics').read().decode())\""
        )

    before = counter(metrics(), "funfleet_http_requests_total", **key)
    for i in range(6):
        assert predict(str(i)).status_code == 200
    after = counter(metrics(), "funfleet_http_requests_total", **key)
    assert after - before == 6


def test_ops_endpoints_are_private_on_a_host_without_balancers():
    """This host is its own edge, and this controller is not a monitoring host."""
    for path in ("/metrics", "/metadata"):
        response = requests.get(f"{BASE}{path}", timeout=5)
        assert response.status_code == 403
        assert response.json() == {
            "error": "this endpoint is for the monitoring networks only",
            "code": "forbidden",
            "status": 403,
        }


def uwsgi_pids(host) -> tuple[int, set[int]]:
    stats = json.loads(
        host.check_output(
            'python3 -c "import socket;s=socket.socket(socket.AF_UNIX);'
            "s.connect('/run/funfleet/stats.sock');"
            "print(b''.join(iter(lambda: s.recv(65536), b'')).decode())\""
        )
    )
    return stats["pid"], {w["pid"] for w in stats["workers"]}


def test_killed_worker_is_respawned(host):
    master, workers = uwsgi_pids(host)
    victim = sorted(workers)[0]
    host.run(f"kill -9 {victim}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, now = uwsgi_pids(host)
        if victim not in now and len(now) == 2 and 0 not in now:
            break
        time.sleep(0.5)
    new_master, now = uwsgi_pids(host)
    assert new_master == master
    assert victim not in now
    assert len(now) == 2
    assert host.service(SERVICE).is_running
    wait_ready()
    statuses = [predict(str(i % 10)).status_code for i in range(20)]
    assert statuses == [200] * 20


def test_stopped_app_gives_json_503_and_restart_comes_back(host):
    """Nothing listens on the socket: a 503 (try again, or elsewhere), not a 502."""
    host.run(f"systemctl stop {SERVICE}")
    try:
        response = predict("3")
        assert response.status_code == 503
        assert response.json() == {
            "error": "the inference service is unavailable",
            "code": "service_unavailable",
            "status": 503,
        }
    finally:
        host.run(f"systemctl start {SERVICE}")
    wait_ready(seconds=90)
    assert host.run(f"systemctl restart {SERVICE}").rc == 0
    assert wait_ready(seconds=90)["version"] == "1"
    assert predict("8").json()["best_prediction"] == "8"


def test_unit_hardening_score(host):
    out = host.check_output(f"systemd-analyze security {SERVICE} --no-pager")
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))
    assert score <= 2.0, out
