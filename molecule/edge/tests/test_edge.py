"""The production edge, through real nginx on two fleets: a balancer with an app host behind it,
and a standalone app host (solo), both on HTTPS with a certificate from a test CA.

- TLS on both edges: the chain verifies, HTTP/2, TLS 1.1 refused, no session tickets, HTTP
  redirected, 443 open because TLS is served.
- Per-client limits on the solo host (set low in its host_vars): traffic under them passes, a
  burst over the rate and requests in flight over the connection limit get a JSON 429 with
  Retry-After, never a 5xx.
- Slow-loris clients do not stop normal requests, and nginx cuts them.
- A full uWSGI listen queue answers a JSON 503, through the balancer too.
- /metrics and /metadata: never through the balancer, only from the monitoring host on the app host.
- One request id in the response and in the balancer's, the app host's nginx's and the app's logs.
- The monitoring host's real Prometheus: every target up, requests counted exactly, readiness
  of a replaced release at 0, an alert that fires, exporters closed to everyone else.

Tests run in file order; each leaves the fleet as it found it.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

from fleetcheck import ROOT, address, playbook, predict, sample, sh, wait_ready

testinfra_hosts = ["funfleet-edge-lb"]  # every test runs once; hosts are reached with docker exec

LB, APP, SOLO, MONITOR = "funfleet-edge-lb", "funfleet-edge-app1", "funfleet-edge-solo", "funfleet-edge-monitor"
CA = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "tls" / "ca.crt"
# Each edge: its container, HTTPS base, plain HTTP base (nginx redirects to https://$host), HTTPS port.
EDGES = {
    "balancer": (LB, "https://localhost:18443", "http://localhost:18480", 18443),
    "solo": (SOLO, "https://localhost:18543", "http://localhost:18580", 18543),
}
LB_BASE, SOLO_BASE = EDGES["balancer"][1], EDGES["solo"][1]
# The solo host's limits (molecule/edge/host_vars/funfleet-edge-solo.yml).
SOLO_RATE, SOLO_BURST, SOLO_CONNECTIONS, SOLO_RETRY_AFTER = 20, 40, 4, "2"
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module", autouse=True)
def ready():
    os.environ["REQUESTS_CA_BUNDLE"] = str(CA)  # fleetcheck's requests verify against the test CA
    for _, base, _, _ in EDGES.values():
        wait_ready(base)


def settle_solo_limits() -> None:
    """Wait until the solo host's rate bucket has drained (burst / rate seconds, and a margin)."""
    time.sleep(SOLO_BURST / SOLO_RATE + 1)


def tls_socket(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(CA))
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def s_client(port: int, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", *flags],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- TLS, on the balancer and on a standalone host -------------------------------------------


@pytest.mark.parametrize("edge", EDGES)
def test_curl_verifies_the_certificate_and_speaks_http2(edge):
    _, base, _, _ = EDGES[edge]
    curl = ["curl", "-sS", "--http2", "--cacert", str(CA), "-o", "/dev/null", "-w", "%{http_version} %{http_code}"]
    out = subprocess.run([*curl, f"{base}/readyz"], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout == "2 200"


@pytest.mark.parametrize("edge", EDGES)
def test_predictions_over_https(edge):
    _, base, _, _ = EDGES[edge]
    response = requests.post(f"{base}/predict", files={"image": ("3.png", sample("3"))}, timeout=20, verify=str(CA))
    assert response.status_code == 200
    assert response.json()["best_prediction"] == "3"
    assert response.headers["Strict-Transport-Security"] == "max-age=300"


@pytest.mark.parametrize("edge", EDGES)
def test_tls_1_1_is_refused_and_1_2_and_1_3_are_served(edge):
    _, _, _, port = EDGES[edge]
    old = s_client(port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert old.returncode != 0
    assert "alert protocol version" in old.stdout + old.stderr
    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        current = s_client(port, flag, "-CAfile", str(CA))
        assert current.returncode == 0, current.stderr
        # The handshake line and the chain check; the later session block depends on resumption.
        assert f"New, {name}, Cipher is" in current.stdout
        assert "Verification: OK" in current.stdout


@pytest.mark.parametrize("edge", EDGES)
def test_no_session_tickets(edge):
    """TLS 1.2 tickets are encrypted with a long-lived key that would unlock past sessions; with
    tickets off, OpenSSL resumes TLS 1.3 from the server's session cache instead."""
    _, _, _, port = EDGES[edge]
    out = s_client(port, "-tls1_2", "-CAfile", str(CA))
    assert out.returncode == 0
    assert "TLS session ticket" not in out.stdout


# Mozilla's "intermediate" TLS 1.2 suites: every one ECDHE (forward secrecy) with an AEAD cipher.
FORWARD_SECRET = re.compile(r"^(ECDHE|TLS_)[A-Z0-9_-]*(GCM|CHACHA20)")


@pytest.mark.parametrize("edge", EDGES)
def test_a_tls_scanner_finds_forward_secret_suites_only(edge):
    """sslscan (Debian's) lists every suite the edge accepts, protocol by protocol."""
    _, _, _, port = EDGES[edge]
    out = subprocess.run(
        ["sslscan", "--no-colour", "--no-heartbleed", "--xml=-", f"localhost:{port}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    accepted = re.findall(r'<cipher status="(?:accepted|preferred)" sslversion="([^"]+)"[^>]* cipher="([^"]+)"', out)
    assert {version for version, _ in accepted} == {"TLSv1.2", "TLSv1.3"}, accepted
    weak = [(version, cipher) for version, cipher in accepted if not FORWARD_SECRET.match(cipher)]
    assert weak == [], weak
    for kind, version in (("ssl", "2"), ("ssl", "3"), ("tls", "1.0"), ("tls", "1.1")):
        assert f'<protocol type="{kind}" version="{version}" enabled="0"' in out, (kind, version)


# --- Request limits at the edge: one setting each (funfleet_request_*), a JSON 4xx over them --


def raw_status(port: int, request: bytes) -> tuple[int, dict]:
    with tls_socket(port) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def request_with(path: str = "/healthz", headers: tuple[tuple[str, str], ...] = (), method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize(
    ("case", "request_bytes", "status", "code"),
    [
        (
            "three 6 KB headers",
            request_with(headers=tuple((f"X-Big-{i}", "a" * 6000) for i in range(3))),
            431,
            "headers_too_large",
        ),
        ("a 9 KB cookie", request_with(headers=(("Cookie", "a=" + "b" * 9000),)), 431, "headers_too_large"),
        ("a 9 KB URI", request_with("/healthz?q=" + "a" * 9000), 414, "uri_too_long"),
        (
            "a 9 MiB body",
            request_with("/predict", (("Content-Length", str(9 << 20)), ("Content-Type", "image/png")), "POST"),
            413,
            "request_too_large",
        ),
        ("a garbage request line", b"GET\x01 / HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ],
)
def test_over_a_limit_the_edge_answers_json(edge, case, request_bytes, status, code):
    _, _, _, port = EDGES[edge]
    got, body = raw_status(port, request_bytes)
    assert (got, body["code"], body["status"]) == (status, code, status), (case, body)


@pytest.mark.parametrize("edge", EDGES)
def test_inside_the_limits_large_requests_reach_the_app(edge):
    """Headers and a query string as large as the edge takes (two 7.9 KB headers, many short
    ones, a 7.9 KB query string, twice in uWSGI's request variables): each hop takes them."""
    _, _, _, port = EDGES[edge]
    for request_bytes in (
        request_with(headers=tuple((f"x{i}", "1") for i in range(700))),
        request_with("/healthz?q=" + "a" * 7900),
        request_with(headers=tuple((f"X-Big-{i}", "a" * 7900) for i in range(2))),
    ):
        got, body = raw_status(port, request_bytes)
        assert got == 200, body


@pytest.mark.parametrize("edge", EDGES)
def test_http2_requests_with_many_headers_get_no_5xx(edge, tmp_path):
    """Over HTTP/2 nginx counts a header's name and value only, so 2,000 one-letter headers fit
    its limit; each became a uWSGI request variable until only the headers the app reads were
    passed on, and the variables outgrew uWSGI's 64 KiB (nginx: 500)."""
    _, base, _, _ = EDGES[edge]
    headers = tmp_path / "headers"
    headers.write_text("".join(f"x{i}: 1\n" for i in range(2000)))
    curl = ["curl", "-sS", "--http2", "--cacert", str(CA), "-o", "/dev/null", "-w", "%{http_version} %{http_code}"]
    out = subprocess.run(
        [*curl, "-H", f"@{headers}", f"{base}/readyz"], capture_output=True, text=True, timeout=30, check=True
    )
    version, status = out.stdout.split()
    assert version == "2"
    assert 200 <= int(status) < 500, out.stdout + out.stderr


@pytest.mark.parametrize("edge", EDGES)
def test_plain_http_redirects_to_https(edge):
    _, _, http, _ = EDGES[edge]
    response = requests.get(f"{http}/readyz", allow_redirects=False, timeout=10)
    assert response.status_code == 301
    assert response.headers["Location"] == "https://localhost/readyz"


@pytest.mark.parametrize("edge", EDGES)
def test_http2_as_this_nginx_version_supports_it(edge):
    container = EDGES[edge][0]
    version = sh(container, "nginx", "-v").stderr
    dump = sh(container, "nginx", "-T").stdout
    assert "nginx/1.22" in version  # Debian 12: before 1.25.1, so HTTP/2 goes on the listen line
    assert "listen 443 ssl http2 default_server;" in dump
    assert "http2 on;" not in dump
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in dump
    assert "ssl_session_tickets off;" in dump


def exporter_rules() -> list[str]:
    """What every fleet host lets the monitoring host reach: its node and nginx exporters."""
    monitor = address(MONITOR)
    return [
        f"ufw allow from {monitor} to any port 9100 proto tcp comment 'funfleet:node-exporter-{monitor}'",
        f"ufw allow from {monitor} to any port 9113 proto tcp comment 'funfleet:nginx-exporter-{monitor}'",
    ]


def ufw_added(container: str) -> list[str]:
    return [line for line in sh(container, "ufw", "show", "added").stdout.splitlines() if line.startswith("ufw ")]


@pytest.mark.parametrize("edge", EDGES)
def test_key_is_private_and_443_is_open(edge):
    container = EDGES[edge][0]
    key = sh(container, "stat", "-c", "%U %G %a", "/etc/nginx/tls/funfleet.key").stdout.split()
    assert key == ["root", "root", "600"]
    assert sh(container, "stat", "-c", "%a", "/etc/nginx/tls").stdout.strip() == "700"
    # The balancer is also its fleet's artifact source, open to its app host only.
    app = address(APP)
    source = [f"ufw allow from {app} to any port 8070 proto tcp comment 'funfleet:artifacts-from-app-{app}'"]
    assert ufw_added(container) == [
        "ufw allow 80/tcp comment 'funfleet:http'",
        "ufw allow 443/tcp comment 'funfleet:https'",
        *(source if container == LB else []),
        *exporter_rules(),
    ]


# --- Per-client limits (the solo host: its own edge) -----------------------------------------


def test_only_the_edges_limit_clients():
    """The edges carry the limits; the app host behind the balancer has none (every request it
    gets comes from the balancer's one address)."""
    solo = sh(SOLO, "nginx", "-T").stdout
    assert f"limit_req zone=funfleet_req burst={SOLO_BURST} nodelay;" in solo
    assert f"rate={SOLO_RATE}r/s;" in solo
    assert f"limit_conn funfleet_conn {SOLO_CONNECTIONS};" in solo
    balancer = sh(LB, "nginx", "-T").stdout
    assert "limit_req zone=funfleet_req burst=2000 nodelay;" in balancer  # the fleet defaults
    assert "rate=1000r/s;" in balancer
    assert "limit_conn funfleet_conn 64;" in balancer
    behind = sh(APP, "nginx", "-T").stdout
    assert "limit_req " not in behind
    assert "limit_conn " not in behind


def test_request_limits_come_from_one_setting_at_every_hop():
    """funfleet_request_*: the edges hold them, the app host behind the balancer twice the
    buffers and 1 KiB a line more, uWSGI the most nginx can pass, the app the same body limit;
    only the headers the app reads go on to uWSGI."""
    for host, buffers in ((LB, "2 8k"), (SOLO, "2 8k"), (APP, "4 9k")):
        config = sh(host, "nginx", "-T").stdout
        assert f"large_client_header_buffers {buffers};" in config, host
        assert "client_max_body_size 8m;" in config, host
    for host in (APP, SOLO):
        assert "buffer-size = 65535" in sh(host, "cat", "/etc/funfleet/base.ini").stdout
        assert "FUNFLEET_MAX_CONTENT_LENGTH=8388608" in sh(host, "cat", "/etc/funfleet/app.env").stdout
        site = sh(host, "nginx", "-T").stdout
        assert "uwsgi_pass_request_headers off;" in site
        assert "uwsgi_param HTTP_ORIGIN $http_origin if_not_empty;" in site


def test_traffic_under_the_limits_gets_no_429():
    settle_solo_limits()
    with requests.Session() as session:
        statuses = [session.get(f"{SOLO_BASE}/readyz", timeout=10).status_code for _ in range(SOLO_BURST - 10)]
    assert statuses == [200] * (SOLO_BURST - 10)


def test_a_burst_over_the_rate_gets_json_429_with_retry_after_and_no_5xx():
    """300 requests from 4 keep-alive clients: far over 20/s plus a burst of 40 however fast this
    machine is (they would need 13 s to stay under it). Bounded in count and time."""
    settle_solo_limits()
    responses: list[requests.Response] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def client() -> None:
        with requests.Session() as session:
            for _ in range(75):
                if time.monotonic() > deadline:
                    return
                response = session.get(f"{SOLO_BASE}/healthz", timeout=10)
                with lock:
                    responses.append(response)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    statuses = Counter(r.status_code for r in responses)
    assert sum(statuses.values()) == 300
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] >= SOLO_BURST, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["Retry-After"] == SOLO_RETRY_AFTER
    assert limited.headers["Content-Type"] == "application/json"
    assert limited.json() == {
        "error": f"too many requests from this client; retry after {SOLO_RETRY_AFTER}s",
        "code": "rate_limited",
        "status": 429,
    }
    assert GENERATED_ID.match(limited.headers["X-Request-Id"])
    settle_solo_limits()


def slow_upload(port: int) -> ssl.SSLSocket:
    """A client that sends its request header, then its body a few bytes at a time: a request in
    flight for as long as it keeps sending."""
    sock = tls_socket(port)
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 100000\r\n\r\n0123456789"
    )
    return sock


def test_requests_in_flight_over_the_connection_limit_get_429():
    settle_solo_limits()
    uploads = [slow_upload(18543) for _ in range(SOLO_CONNECTIONS)]
    try:
        time.sleep(1)  # nginx has read each header: each counts as a request in flight
        response = requests.get(f"{SOLO_BASE}/readyz", timeout=10)
        assert response.status_code == 429
        assert response.json()["code"] == "rate_limited"
        assert response.headers["Retry-After"] == SOLO_RETRY_AFTER
    finally:
        for sock in uploads:
            sock.close()
    deadline = time.monotonic() + 20
    while requests.get(f"{SOLO_BASE}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the connection limit did not let go"
        time.sleep(0.5)


# --- Slow clients ----------------------------------------------------------------------------


def test_slow_loris_clients_do_not_block_requests_and_are_cut():
    """50 clients that send a header line a second and never finish: normal requests are still
    served meanwhile, and nginx drops every slow one after client_header_timeout (5 s on the
    solo host), long before they would have finished (bounded: 30 s)."""
    settle_solo_limits()
    slow = [tls_socket(18543) for _ in range(50)]
    for sock in slow:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n")
    open_socks = set(slow)
    served = []
    started = time.monotonic()
    try:
        for i in range(10):
            served.append(predict(str(i), base=SOLO_BASE, timeout=10).status_code)
            time.sleep(0.3)
        while open_socks and time.monotonic() - started < 30:
            readable, _, _ = select.select(list(open_socks), [], [], 1)
            for sock in readable:
                try:
                    if sock.recv(4096) == b"":
                        open_socks.discard(sock)
                except (ssl.SSLError, OSError):
                    open_socks.discard(sock)
            for sock in list(open_socks):
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except (ssl.SSLError, OSError):
                    open_socks.discard(sock)
    finally:
        for sock in slow:
            sock.close()
    assert served == [200] * 10
    assert not open_socks, f"{len(open_socks)} slow clients still connected after 30 s"
    assert "client_header_timeout 5s;" in sh(SOLO, "nginx", "-T").stdout


# --- A full uWSGI listen queue ---------------------------------------------------------------

FLOOD = """
import json, sys, threading, urllib.request, urllib.error, time
def get():
    try:
        with urllib.request.urlopen("http://127.0.0.1/readyz", timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
results = []
def worker():
    results.append(get()[0])
threads = [threading.Thread(target=worker) for _ in range(16)]
for t in threads: t.start()
time.sleep(2)
status, body = get()
print(json.dumps({"status": status, "body": body}), flush=True)
for t in threads: t.join(90)
print(json.dumps(sorted(results)), flush=True)
"""


def test_a_full_listen_queue_answers_json_503_through_the_balancer_too():
    """The app host's workers are stopped (SIGSTOP), 16 requests fill uWSGI's listen queue (8 in
    this scenario), and the next request gets a JSON 503 at once: from the host's own nginx, and
    through the balancer (which may try one more host; here there is none). Once the workers
    go on, the queued requests are served."""
    master = sh(APP, "systemctl", "show", "-p", "MainPID", "--value", "funfleet").stdout.strip()
    workers = sh(APP, "pgrep", "-P", master).stdout.split()
    assert len(workers) == 2
    assert "listen = 8" in sh(APP, "cat", "/etc/funfleet/uwsgi.ini").stdout
    sh(APP, "kill", "-STOP", *workers)
    flood = subprocess.Popen(["docker", "exec", APP, "python3", "-c", FLOOD], stdout=subprocess.PIPE, text=True)
    try:
        probe = json.loads(flood.stdout.readline())
        through_lb = requests.get(f"{LB_BASE}/readyz", timeout=30)
    finally:
        sh(APP, "kill", "-CONT", *workers)
    queued = json.loads(flood.stdout.readline())
    flood.wait(timeout=120)
    assert probe["status"] == 503
    assert json.loads(probe["body"])["code"] == "service_unavailable"
    assert through_lb.status_code == 503
    assert through_lb.json()["code"] == "service_unavailable"
    assert set(queued) == {200, 503}, queued  # some waited in the queue and were served
    wait_ready(LB_BASE, seconds=60)  # the balancer skipped the host for fail_timeout


# --- Private ops endpoints -------------------------------------------------------------------

OPS_PROBE = """
import ssl, sys, urllib.request, urllib.error
# The solo host serves HTTPS with a certificate for localhost, reached here by address.
context = ssl._create_unverified_context() if sys.argv[1].startswith("https") else None
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5, context=context) as r:
        print(r.status, r.read().decode()[:200000])
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode()[:200000])
"""


@pytest.mark.parametrize("path", ["/metrics", "/metadata"])
def test_ops_endpoints_are_not_served_through_the_balancer_or_to_the_public(path):
    through_lb = requests.get(f"{LB_BASE}{path}", timeout=10)
    assert through_lb.status_code == 404
    assert through_lb.json()["code"] == "not_found"
    public = requests.get(f"{SOLO_BASE}{path}", timeout=10)  # a host that is its own edge
    assert public.status_code == 403
    assert public.json()["code"] == "forbidden"
    # The balancer's own address may reach the app host (UFW), but nginx refuses it.
    from_lb = sh(LB, "python3", "-c", OPS_PROBE, f"http://{address(APP)}{path}").stdout
    assert from_lb.startswith("403 ")
    assert requests.get(f"{LB_BASE}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{LB_BASE}/readyz", timeout=10).status_code == 200


def test_the_monitoring_host_reads_them_on_each_app_host():
    # The app host behind the balancer speaks HTTP; the solo host serves HTTPS only.
    for host, scheme in ((APP, "http"), (SOLO, "https")):
        metrics = sh(MONITOR, "python3", "-c", OPS_PROBE, f"{scheme}://{address(host)}/metrics").stdout
        assert metrics.startswith("200 ")
        assert "funfleet_http_requests_total{" in metrics
        metadata = sh(MONITOR, "python3", "-c", OPS_PROBE, f"{scheme}://{address(host)}/metadata").stdout
        assert metadata.startswith("200 ")
        assert json.loads(metadata[4:])["service"]["host"] == host


def test_app_host_firewall_admits_the_balancer_and_the_monitoring_host_only():
    lb, monitor = address(LB), address(MONITOR)
    assert ufw_added(APP) == [
        f"ufw allow from {lb} to any port 80 proto tcp comment 'funfleet:http-from-lb-{lb}'",
        f"ufw allow from {monitor} to any port 80 proto tcp comment 'funfleet:http-from-monitoring-{monitor}'",
        *exporter_rules(),
    ]
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 80), timeout=3); print('connected')"
    from_solo = sh(SOLO, "python3", "-c", probe, address(APP), check=False)
    assert from_solo.returncode == 1
    assert "timed out" in from_solo.stderr  # UFW drops, it does not reject


# --- Request ids ------------------------------------------------------------------------------


def log_entry(container: str, command: list[str], request_id: str, seconds: float = 15) -> dict:
    """The JSON log line carrying request_id (access logs are flushed every second)."""
    deadline = time.monotonic() + seconds
    while True:
        for line in sh(container, *command).stdout.splitlines():
            if request_id in line and line.lstrip().startswith("{"):
                return json.loads(line)
        assert time.monotonic() < deadline, f"{request_id} not in {container}'s {command}"
        time.sleep(0.5)


NGINX_LOG = ["tail", "-n", "500", "/var/log/nginx/access.log"]
APP_LOG = ["journalctl", "-u", "funfleet", "-o", "cat", "-n", "500", "--no-pager"]


def test_one_request_id_in_the_response_and_at_every_hop():
    response = predict("5", base=LB_BASE)
    assert response.status_code == 200
    request_id = response.headers["X-Request-Id"]
    assert GENERATED_ID.match(request_id)
    balancer = log_entry(LB, NGINX_LOG, request_id)
    assert (balancer["request_id"], balancer["status"], balancer["method"]) == (request_id, 200, "POST")
    assert balancer["upstream_addr"] == f"{address(APP)}:80"
    assert balancer["upstream_status"] == "200"
    front = log_entry(APP, NGINX_LOG, request_id)
    assert (front["request_id"], front["status"], front["uri"]) == (request_id, 200, "/predict")
    assert front["upstream_addr"] == "unix:/run/funfleet/app.sock"
    assert front["remote_addr"] == address(LB)
    app = log_entry(APP, APP_LOG, request_id)
    assert (app["request_id"], app["logger"], app["status"], app["path"]) == (
        request_id,
        "funfleet.access",
        200,
        "/predict",
    )


def test_a_valid_incoming_request_id_is_kept_and_an_invalid_one_replaced():
    kept = requests.get(f"{LB_BASE}/readyz", headers={"X-Request-Id": "client-trace.42:abc"}, timeout=10)
    assert kept.headers["X-Request-Id"] == "client-trace.42:abc"
    assert log_entry(APP, APP_LOG, "client-trace.42:abc")["path"] == "/readyz"
    for bad in ("has spaces in it", "x" * 200, '"quoted"'):
        replaced = requests.get(f"{LB_BASE}/readyz", headers={"X-Request-Id": bad}, timeout=10)
        assert GENERATED_ID.match(replaced.headers["X-Request-Id"]), bad


def test_access_logs_are_json_and_configs_private():
    for container in (LB, APP, SOLO):
        line = sh(container, "tail", "-n", "1", "/var/log/nginx/access.log").stdout
        entry = json.loads(line)
        assert {"time", "request_id", "remote_addr", "status", "request_time", "upstream_addr"} <= set(entry)
        for conf in ("/etc/nginx/sites-available/funfleet.conf", "/etc/nginx/conf.d/funfleet-http.conf"):
            assert sh(container, "stat", "-c", "%U %G %a", conf).stdout.split() == ["root", "root", "640"]


# --- Monitoring: the monitoring host's real Prometheus ----------------------------------------

QUERY = """
import json, sys, urllib.parse, urllib.request
path = sys.argv[1] + ("?" + urllib.parse.urlencode({"query": sys.argv[2]}) if len(sys.argv) > 2 else "")
print(urllib.request.urlopen("http://127.0.0.1:9090" + path, timeout=10).read().decode())
"""


def prometheus(path: str, query: str | None = None) -> dict:
    body = json.loads(sh(MONITOR, "python3", "-c", QUERY, path, *([query] if query else [])).stdout)
    assert body["status"] == "success", body
    return body["data"]


def instant(query: str) -> dict[str, float]:
    """host -> value of an instant query (one series per host, or `all` for an aggregate)."""
    return {r["metric"].get("host", "all"): float(r["value"][1]) for r in prometheus("/api/v1/query", query)["result"]}


def eventually(check, seconds: float = 90, what: str = ""):
    """Poll `check` (a function returning a truthy value) until it holds; bounded."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        time.sleep(2)


def test_promtool_accepts_the_config_and_the_rules():
    config = sh(MONITOR, "promtool", "check", "config", "/etc/prometheus/prometheus.yml")
    assert "SUCCESS" in config.stdout + config.stderr
    rules = sh(MONITOR, "promtool", "check", "rules", "/etc/prometheus/funfleet-rules.yml")
    assert "SUCCESS: 15 rules found" in rules.stdout + rules.stderr


def out_of_rotation_case(hosts: int, out: int, description: str) -> dict:
    """A promtool rule test of FunfleetGpuHostsOutOfRotation: `hosts` GPU hosts, `out` of them
    holding themselves out of rotation for 5 minutes; it fires where two or more, over a quarter, are."""
    series = [
        {
            "series": f'funfleet_gpu_out_of_rotation{{instance="gpu{i}:9100",host="gpu{i}"}}',
            "values": ("1" if i < out else "0") + "x30",
        }
        for i in range(hosts)
    ]
    fired = {
        "exp_labels": {"severity": "critical"},
        "exp_annotations": {"summary": f"{out} GPU hosts took themselves out of rotation", "description": description},
    }
    fires = out >= 2 and out / hosts > 0.25
    test = {"eval_time": "5m", "alertname": "FunfleetGpuHostsOutOfRotation", "exp_alerts": [fired] if fires else []}
    return {"interval": "10s", "input_series": series, "alert_rule_test": [test]}


def test_the_fleet_wide_gpu_gate_alert_needs_two_hosts_and_over_a_quarter():
    """promtool's own rule tests, on the installed rules: one GPU host out of four is its own
    business; two of four is a shared cause; two of eight is not over a quarter."""
    rules = yaml.safe_load(sh(MONITOR, "cat", "/etc/prometheus/funfleet-rules.yml").stdout)
    rule = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "FunfleetGpuHostsOutOfRotation")
    description = rule["annotations"]["description"]
    cases = [out_of_rotation_case(hosts, out, description) for hosts, out in [(4, 1), (4, 2), (8, 2)]]
    tests = {"rule_files": ["/etc/prometheus/funfleet-rules.yml"], "evaluation_interval": "10s", "tests": cases}
    path = "/tmp/funfleet-rule-tests.yml"
    sh(MONITOR, "sh", "-c", f"cat > {path} <<'EOF'\n{json.dumps(tests)}\nEOF")  # JSON is YAML
    try:
        result = sh(MONITOR, "promtool", "test", "rules", path, check=False)
    finally:
        sh(MONITOR, "rm", "-f", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_fleet_host_is_a_target_and_up():
    expected = {
        ("funfleet_app", APP),
        ("node", APP),
        ("nginx", APP),
        ("node", LB),
        ("nginx", LB),
        ("prometheus", MONITOR),
    }

    def all_up():
        targets = prometheus("/api/v1/targets")["activeTargets"]
        seen = {(t["labels"]["job"], t["labels"]["host"]): t["health"] for t in targets}
        return seen if set(seen) == expected and set(seen.values()) == {"up"} else None

    eventually(all_up, what="every target up")


def test_predictions_through_the_balancer_are_counted_exactly():
    query = 'sum(funfleet_http_requests_total{job="funfleet_app",endpoint="/predict"})'

    def settled():
        first = instant(query).get("all", 0.0)
        time.sleep(6)  # a scrape later (5 s in this scenario)
        return (first,) if instant(query).get("all", 0.0) == first else None

    (before,) = eventually(settled, what="a stable count")
    for i in range(25):
        assert predict(str(i % 10), base=LB_BASE).status_code == 200
    eventually(lambda: instant(query).get("all") == before + 25, what=f"{before} + 25 predictions counted")


def test_readiness_of_a_replaced_release_reads_0(tmp_path):
    """A new release on the app host (the only one behind the balancer: a chain reload in
    service); its old workers are gone, and Prometheus reads version 1 at 0, version 2 at 1."""
    release = tmp_path / "digits-2"
    cut = [sys.executable, "-m", "inference.release_tools", "cut", str(ROOT / "files" / "models" / "digits" / "1")]
    subprocess.run([*cut, "2", "--out", str(release)], check=True, capture_output=True, timeout=60)
    result = playbook("deploy.yml", "-e", f"app_release_model_src={release}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert wait_ready(LB_BASE)["version"] == "2"

    def switched():
        ready = prometheus("/api/v1/query", f'funfleet_model_ready{{host="{APP}"}}')["result"]
        by_version = {r["metric"]["version"]: float(r["value"][1]) for r in ready}
        return by_version if by_version == {"1": 0.0, "2": 1.0} else None

    eventually(switched, what="version 1 at 0 and version 2 at 1")


def test_a_stopped_app_fires_an_alert():
    sh(APP, "systemctl", "stop", "funfleet")
    try:

        def firing():
            alerts = [a for a in prometheus("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
            down = [a for a in alerts if a["labels"]["alertname"] == "FunfleetTargetDown"]
            # Every target carries its host; an alert without one would page nobody useful.
            assert all("host" in a["labels"] for a in down), down
            return [a for a in down if a["labels"]["host"] == APP and a["labels"]["job"] == "funfleet_app"]

        (alert,) = eventually(firing, seconds=120, what="FunfleetTargetDown firing for the app")
        assert alert["labels"]["severity"] == "critical"
    finally:
        sh(APP, "systemctl", "start", "funfleet")
    wait_ready(LB_BASE, seconds=120)


def test_an_xid_79_fires_the_gpu_reset_alert():
    """The app host has no GPU: its node exporter's textfile collector serves an XID 79 count as
    the GPU metrics collector writes the first XID 79 of a boot (a series born at 1), and the real
    Prometheus fires FunfleetGpuNeedsReset for that host and GPU with the action to take; and with
    a verdict of sick but not out of rotation (the gate could not be written), FunfleetGpuGateNotApplied."""
    textfile = "/var/lib/prometheus/node-exporter/funfleet_gpu_xid_test.prom"
    series = 'funfleet_gpu_xid_errors_total{gpu="0",UUID="GPU-stand-in",modelName="Tesla T4",xid="79"}'
    # The host's verdict as a collector whose gate file could not be written reports it.
    verdict = "'funfleet_gpu_healthy 0' 'funfleet_gpu_out_of_rotation 0'"

    def write(count: int) -> None:
        sh(
            APP,
            "sh",
            "-c",
            f"mkdir -p {Path(textfile).parent} && printf '%s\\n' '{series} {count}' {verdict} > {textfile}.tmp"
            f" && mv {textfile}.tmp {textfile}",
        )

    try:
        write(1)

        def firing():
            alerts = [a for a in prometheus("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
            return [
                a
                for a in alerts
                if a["labels"]["alertname"] == "FunfleetGpuNeedsReset" and a["labels"].get("host") == APP
            ]

        (alert,) = eventually(firing, seconds=120, what="FunfleetGpuNeedsReset firing for the app host")
        assert alert["labels"]["severity"] == "critical"
        assert (alert["labels"]["gpu"], alert["labels"]["xid"]) == ("0", "79")
        assert "Drain the host" in alert["annotations"]["description"]

        def gate_not_applied():
            alerts = [a for a in prometheus("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
            return [
                a
                for a in alerts
                if a["labels"]["alertname"] == "FunfleetGpuGateNotApplied" and a["labels"].get("host") == APP
            ]

        eventually(gate_not_applied, seconds=120, what="FunfleetGpuGateNotApplied firing for the app host")
    finally:
        sh(APP, "rm", "-f", textfile)


def test_exporters_answer_the_monitoring_host_only():
    probe = (
        "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print('connected')"
    )
    for port in ("9100", "9113"):
        for host in (APP, LB):
            from_monitor = sh(MONITOR, "python3", "-c", probe, address(host), port, check=False)
            assert from_monitor.stdout.strip() == "connected", from_monitor.stderr
            from_solo = sh(SOLO, "python3", "-c", probe, address(host), port, check=False)
            assert from_solo.returncode == 1
            assert "timed out" in from_solo.stderr  # UFW drops, it does not reject


# The dashboard's GPU panel reads NVIDIA's DCGM exporter, which only GPU hosts run: its names
# are checked against dcgm-exporter's default counters (default-counters.csv) instead.
DCGM_DEFAULT_COUNTERS = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP"}


def test_every_dashboard_query_reads_real_metrics():
    """The Grafana dashboard's queries name only metrics this fleet's real app and exporters
    export (as Prometheus scraped them here)."""
    dashboard = json.loads((ROOT / "files" / "grafana" / "funfleet.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["query"]["query"])
    named = {m for expr in exprs for m in re.findall(r"\b(?:funfleet|node|nginx|DCGM)_[A-Za-z0-9_:]+", expr)}
    scraped = set(prometheus("/api/v1/label/__name__/values"))
    assert named - DCGM_DEFAULT_COUNTERS <= scraped, sorted(named - DCGM_DEFAULT_COUNTERS - scraped)
    assert {m for m in named if m.startswith("DCGM_")} <= DCGM_DEFAULT_COUNTERS
    assert {
        "funfleet_model_ready",
        "funfleet_uwsgi_workers",
        "funfleet_uwsgi_worker_rss_bytes",
        "nginx_connections_active",
        "node_cpu_seconds_total",
    } <= named
