"""The closed loop of a GPU host's health, under keep-alive load through the balancer: app1 gets
a stand-in GPU and the real GPU metrics collector (molecule/fleet/gpu-health.yml), then an XID 79
in the driver's format. Its own health check takes it out of rotation (its nginx answers 403, the
balancer retries elsewhere, /readyz says why), it stays out while nvidia-smi answers again, and an
acknowledged GPU reset brings it back. No well-behaved request fails on the way.

Runs after test_fleet.py (file order), on the fleet as that left it, and puts it back as found.
"""

from __future__ import annotations

import json
import time

from fleetcheck import ROOT, Load, playbook, sh, wait_ready

testinfra_hosts = ["funfleet-fleet-lb"]  # runs once; hosts are reached with docker exec

LB = "funfleet-fleet-lb"
VICTIM, SURVIVOR = "funfleet-fleet-app1", "funfleet-fleet-app2"
GATE = "/var/lib/funfleet-gpu-health/unhealthy.json"  # funfleet_gpu_gate_file's default
DROPIN = "/etc/systemd/system/funfleet-gpu-metrics.service.d/test-identifier.conf"
# The driver's line for the stand-in's GPU (PCI 00000000:01:00.0), as the kernel logs it.
XID79 = "NVRM: Xid (PCI:0000:01:00): 79, pid=2412, name=uwsgi, GPU has fallen off the bus."


def readyz(container: str) -> tuple[int, dict]:
    """The host's own /readyz through its nginx, asked on the host: (status, JSON body)."""
    code = (
        "import urllib.request, urllib.error\n"
        "try:\n"
        "    r = urllib.request.urlopen('http://127.0.0.1/readyz', timeout=5); print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    status, _, body = sh(container, "python3", "-c", code).stdout.partition("\n")
    return int(status), json.loads(body)


def until(check, seconds: float, step: float = 0.5):
    """Polls check() until it returns something truthy; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(step)
    raise AssertionError(f"not within {seconds}s")


def gated() -> bool:
    """The host's /readyz answers 403 with the gate's reasons (403 as for a drain: a balancer never
    counts it against the host)."""
    status, body = readyz(VICTIM)
    return status == 403 and body.get("code") == "gpu_unhealthy"


def textfile(container: str) -> list[str]:
    return sh(container, "cat", "/var/lib/prometheus/node-exporter/funfleet_gpu.prom").stdout.splitlines()


def test_an_xid_79_takes_its_host_out_under_load_until_an_acknowledged_reset():
    setup = playbook("../molecule/fleet/gpu-health.yml")
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-2000:]
    sh(VICTIM, "mkdir", "-p", DROPIN.rsplit("/", 1)[0])
    # A container cannot write the host's kernel log: the collector also reads lines logged under
    # a test name (this drop-in, for this test only), in the driver's own format.
    sh(
        VICTIM,
        "sh",
        "-c",
        f"printf '[Service]\\nEnvironment=FUNFLEET_GPU_METRICS_TEST_IDENTIFIER=xid-standin\\n' > {DROPIN}",
    )
    sh(VICTIM, "systemctl", "daemon-reload")
    try:
        sh(VICTIM, "systemctl", "start", "funfleet-gpu-metrics.service")
        assert readyz(VICTIM)[0] == 200  # one healthy stand-in GPU, as provisioned: in rotation
        assert "funfleet_gpu_out_of_rotation 0" in textfile(VICTIM)
        with Load(max_seconds=150) as load:
            until(lambda: load.served_by[VICTIM] > 0, 30)
            sent = time.monotonic()
            sh(VICTIM, "logger", "-t", "xid-standin", "-p", "kern.err", XID79)
            until(gated, 30)
            to_out = time.monotonic() - sent
            _, body = readyz(VICTIM)
            assert body["code"] == "gpu_unhealthy", body
            assert any("XID 79 (GPU has fallen off the bus)" in reason for reason in body["reasons"]), body
            # The balancer sees why, and the host refuses new requests with a 403 it retries elsewhere.
            assert sh(LB, "funfleet-lb", "status").stdout.count("unhealthy (GPU 0 (0:01:00): XID 79") == 1
            time.sleep(2)  # requests the host held when the gate closed finish
            served_before = load.served_by[VICTIM]
            # Healthy readings (the stand-in answers) do not bring it back: the XID needs a reset.
            time.sleep(7)  # more than one collection (every 5 s here)
            assert gated(), "the host came back without a GPU reset"
            assert load.served_by[VICTIM] == served_before, load.summary()
            assert "funfleet_gpu_out_of_rotation 1" in textfile(VICTIM)
            # The operator resets the GPU (nvidia-smi -r) and says so; the host comes back.
            sh(VICTIM, "funfleet-gpu-metrics", "--acknowledge", timeout=90)
            assert readyz(VICTIM)[0] == 200
            back = time.monotonic()
            until(lambda: load.served_by[VICTIM] > served_before, 30)
            to_back = time.monotonic() - back
            time.sleep(3)
        assert load.failures == [], load.summary()
        assert load.served_by[SURVIVOR] > 0
        line = f"XID 79 -> out of rotation in {to_out:.1f}s; acknowledged -> serving again in {to_back:.1f}s; "
        line += load.summary()
        print("\n" + line)
        with (ROOT / ".cache" / "fleet-report.txt").open("a") as report:  # the CI run prints it
            report.write(f"sick GPU on one host: {line}\n")
    finally:
        sh(VICTIM, "rm", "-f", DROPIN, check=False)
        sh(VICTIM, "systemctl", "daemon-reload", check=False)
        sh(VICTIM, "systemctl", "disable", "--now", "funfleet-gpu-metrics.timer", check=False)
        sh(VICTIM, "rm", "-f", GATE, "/usr/local/bin/nvidia-smi", check=False)
    wait_ready()
