"""HTTPS through the real nginx of a host: the certificate verifies against the test CA,
HTTP/2 is negotiated, TLS 1.1 is refused, no session tickets, HTTP redirects, and the firewall
opens 443 because TLS is served there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from fleetcheck import BASE, sample, wait_ready

CA = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "tls" / "ca.crt"
HTTP = "http://localhost:18480"  # nginx redirects to https://$host: the name the client used


@pytest.fixture(scope="module", autouse=True)
def ready():
    os.environ["REQUESTS_CA_BUNDLE"] = str(CA)  # fleetcheck's requests verify against the test CA
    wait_ready(BASE)


def s_client(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "s_client", "-connect", "127.0.0.1:18443", "-servername", "localhost", *flags],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_curl_verifies_the_certificate_and_speaks_http2():
    curl = ["curl", "-sS", "--http2", "--cacert", str(CA), "-o", "/dev/null", "-w", "%{http_version} %{http_code}"]
    out = subprocess.run(
        [*curl, f"{BASE}/readyz"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout == "2 200"


def test_predictions_over_https():
    response = requests.post(f"{BASE}/predict", files={"image": ("3.png", sample("3"))}, timeout=20, verify=str(CA))
    assert response.status_code == 200
    assert response.json()["best_prediction"] == "3"
    assert response.headers["Strict-Transport-Security"] == "max-age=300"


def test_tls_1_1_is_refused_and_1_2_and_1_3_are_served():
    old = s_client("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert old.returncode != 0
    assert "alert protocol version" in old.stdout + old.stderr
    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        current = s_client(flag, "-CAfile", str(CA))
        assert current.returncode == 0, current.stderr
        # The handshake line and the chain check; the later session block depends on resumption.
        assert f"New, {name}, Cipher is" in current.stdout
        assert "Verification: OK" in current.stdout


def test_no_session_tickets():
    """TLS 1.2 tickets are encrypted with a long-lived key that would unlock past sessions; with
    tickets off, OpenSSL resumes TLS 1.3 from the server's session cache instead."""
    out = s_client("-tls1_2", "-CAfile", str(CA))
    assert out.returncode == 0
    assert "TLS session ticket" not in out.stdout


def test_plain_http_redirects_to_https():
    response = requests.get(f"{HTTP}/readyz", allow_redirects=False, timeout=10)
    assert response.status_code == 301
    assert response.headers["Location"] == "https://localhost/readyz"


def test_http2_as_this_nginx_version_supports_it(host):
    version = host.check_output("nginx -v 2>&1")
    dump = host.check_output("nginx -T 2>/dev/null")
    assert "nginx/1.22" in version  # Debian 12: before 1.25.1, so HTTP/2 goes on the listen line
    assert "listen 443 ssl http2 default_server;" in dump
    assert "http2 on;" not in dump
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in dump
    assert "ssl_session_tickets off;" in dump


def test_key_is_private_and_443_is_open(host):
    key = host.file("/etc/nginx/tls/funfleet.key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    assert host.file("/etc/nginx/tls").mode == 0o700
    added = [line for line in host.check_output("ufw show added").splitlines() if line.startswith("ufw ")]
    assert added == ["ufw allow 80/tcp comment 'funfleet:http'", "ufw allow 443/tcp comment 'funfleet:https'"]
