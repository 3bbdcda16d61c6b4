"""A driver upgrade through playbooks/gpu_upgrade.yml, end to end, under keep-alive load through
the balancer: app1 is made a GPU host with stand-ins (a recorded lspci with one Tesla T4, which the
real GPU fact counts; nvidia-smi; a modinfo; a loaded module's version in /sys/module), its driver
a held stand-in package with a newer version in a local apt source, both shipping the module for
the running kernel. The first run drains app1, upgrades and holds the driver again, and stops,
drained, because the host needs a reboot and nvidia_reboot is off; app2, a CPU host, is left
alone. app1 is rebooted (docker restart: its services come back by itself, out of rotation),
boots the new module, and a second run finds nothing to upgrade, checks the GPU and the workers
and puts it back. No well-behaved request fails on the way.

Runs last (file order), on the fleet as test_gpu_health.py left it, and puts app1 back as found.
"""

from __future__ import annotations

import json
import subprocess
import time

from fleetcheck import ROOT, Load, playbook, sh, wait_ready

testinfra_hosts = ["funfleet-fleet-lb"]  # runs once; hosts are reached with docker exec

LB = "funfleet-fleet-lb"
VICTIM, CPU_HOST = "funfleet-fleet-app1", "funfleet-fleet-app2"
STANDINS = ROOT / "molecule" / "gpu" / "standins"
LSPCI = ROOT / "tests" / "fixtures" / "lspci" / "one.txt"
REPO = "/srv/standin-apt"
SOURCE = "/etc/apt/sources.list.d/funfleet-standin.list"
HOLD_CONF = "/etc/apt/apt.conf.d/51funfleet-nvidia-hold"
DRAIN_FILE = "/var/lib/funfleet/drained"  # nginx_drain_file's default
UPGRADE = {"nvidia_upgrade_packages": ["nvidia-driver"], "nvidia_persistence_mode": False}


def put(source, dest: str, mode: str = "0755") -> None:
    subprocess.run(["docker", "cp", str(source), f"{VICTIM}:{dest}"], check=True, capture_output=True, timeout=60)
    sh(VICTIM, "chmod", mode, dest)


def driver_deb(version: str, kernel: str) -> str:
    """A package named like Debian's driver metapackage, shipping the module as Debian's DKMS
    build names it (nvidia-current.ko, where DKMS puts it, aliased to nvidia in modprobe.d), of its
    own version, for `kernel` (its key=value strings, as in a module's .modinfo section)."""
    build = f"/tmp/standin-deb/nvidia-driver-{version}"
    module = f"{build}/lib/modules/{kernel}/updates/dkms"
    control = (
        f"Package: nvidia-driver\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: funfleet tests <tests@funfleet.invalid>\nDescription: stand-in for the driver metapackage\n"
    )
    script = (
        f'mkdir -p {module} {build}/DEBIAN {build}/etc/modprobe.d {REPO}/pool && printf "$1" > {build}/DEBIAN/control'
        f" && echo 'alias nvidia nvidia-current' > {build}/etc/modprobe.d/nvidia-standin.conf"
        f" && printf 'version={version}\\000license=NVIDIA\\000' > {module}/nvidia-current.ko"
        f" && dpkg-deb --build --root-owner-group {build} {REPO}/pool/nvidia-driver_{version}_all.deb >/dev/null"
    )
    sh(VICTIM, "sh", "-c", script, "sh", control)
    return f"{REPO}/pool/nvidia-driver_{version}_all.deb"


def publish(*debs: str) -> None:
    """A local apt source of these packages, as a system source (the upgrade refreshes every source)."""
    script = (
        'set -e; for deb in "$@"; do dpkg-deb -f "$deb";'
        ' echo "Filename: pool/${deb##*/}"; echo "Size: $(stat -c %s "$deb")";'
        ' echo "SHA256: $(sha256sum "$deb" | cut -d" " -f1)"; echo; done'
        f" > {REPO}/Packages; echo 'deb [trusted=yes] file:{REPO} ./' > {SOURCE}"
    )
    sh(VICTIM, "sh", "-c", script, "sh", *debs)


def load_module(version: str) -> None:
    """The module the host booted with: /sys/module/nvidia/version, as the kernel shows it (a
    tmpfs over /sys/module, gone with the container's next start, as a loaded module with a boot)."""
    sh(VICTIM, "sh", "-c", "mountpoint -q /sys/module || mount -t tmpfs -o mode=0755 standin-modules /sys/module")
    sh(VICTIM, "sh", "-c", f"mkdir -p /sys/module/nvidia && echo {version} > /sys/module/nvidia/version")


def installed() -> str:
    return sh(VICTIM, "dpkg-query", "-W", "-f=${Version}", "nvidia-driver").stdout


def held() -> list[str]:
    return sh(VICTIM, "apt-mark", "showhold").stdout.split()


def lb_state() -> dict[str, str]:
    lines = sh(LB, "funfleet-lb", "status").stdout.split("\n")
    return {line.split()[0]: line.split()[2] for line in lines if line.strip()}


def drain_record() -> dict | None:
    found = sh(VICTIM, "cat", DRAIN_FILE, check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def said(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())


def until(check, seconds: float, step: float = 0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(step)
    raise AssertionError(f"not within {seconds}s")


def make_gpu_host(kernel: str) -> None:
    put(STANDINS / "nvidia-smi", "/usr/local/bin/nvidia-smi")
    put(STANDINS / "modinfo", "/usr/local/sbin/modinfo")
    put(LSPCI, "/usr/local/share/standin-lspci.txt", "0644")
    sh(VICTIM, "dpkg-divert", "--local", "--rename", "--divert", "/usr/bin/lspci.real", "--add", "/usr/bin/lspci")
    sh(VICTIM, "sh", "-c", "printf '#!/bin/sh\\ncat /usr/local/share/standin-lspci.txt\\n' > /usr/bin/lspci")
    sh(VICTIM, "chmod", "0755", "/usr/bin/lspci")
    # The kernel that will boot is the running one (a driver-only upgrade); it has its own package's folder.
    sh(VICTIM, "sh", "-c", f"mkdir -p /boot /lib/modules/{kernel} && touch /boot/vmlinuz-{kernel}")
    sh(VICTIM, "ln", "-sfn", f"vmlinuz-{kernel}", "/boot/vmlinuz")
    old, new = driver_deb("9999.1", kernel), driver_deb("9999.2", kernel)
    sh(VICTIM, "sh", "-c", f"dpkg -i {old} >/dev/null && apt-mark hold nvidia-driver >/dev/null")  # as provisioned
    publish(old, new)
    load_module("9999.1")


def put_back(kernel: str) -> None:
    """Every stand-in away, app1 a CPU host again, whatever the test reached."""
    steps = [
        "mountpoint -q /sys/module && umount /sys/module",
        "apt-mark unhold nvidia-driver; dpkg --purge nvidia-driver",
        f"rm -rf {REPO} /tmp/standin-deb {SOURCE} {HOLD_CONF} /var/lib/apt/lists/_srv_standin-apt_*",
        f"rm -rf /boot/vmlinuz /boot/vmlinuz-{kernel} /lib/modules/{kernel}",
        "rm -f /usr/local/bin/nvidia-smi /usr/local/sbin/modinfo /usr/local/share/standin-lspci.txt",
        "[ -e /usr/bin/lspci.real ] && rm -f /usr/bin/lspci && dpkg-divert --local --rename --remove /usr/bin/lspci",
    ]
    for step in steps:
        sh(VICTIM, "sh", "-c", step, check=False)


def test_a_driver_upgrade_drains_its_host_stops_for_the_reboot_then_checks_and_undrains():
    kernel = sh(VICTIM, "uname", "-r").stdout.strip()
    try:
        make_gpu_host(kernel)
        with Load(max_seconds=1200) as load:  # past both runs (each 900 s at most) on a slow machine
            until(lambda: load.served_by[VICTIM] > 0, 30)
            first = playbook("gpu_upgrade.yml", "-e", json.dumps(UPGRADE))
            words = said(first)
            assert first.returncode == 2, words[-3000:]
            assert f"{VICTIM} has the new driver or kernel but needs a reboot to load it" in words
            assert f"{kernel}: /lib/modules/{kernel}/updates/dkms/nvidia-current.ko" in words  # the boot kernel's
            assert installed() == "9999.2"
            assert held() == ["nvidia-driver"]  # held again
            assert drain_record() == {"by": "gpu_upgrade", "reason": "driver upgrade"}
            assert lb_state() == {VICTIM: "drained", CPU_HOST: "serving"}  # the CPU host is left alone
            served_before = load.served_by[VICTIM]

            # The operator reboots it; it boots the new module, its app starts by itself, out of rotation.
            subprocess.run(["docker", "restart", VICTIM], check=True, capture_output=True, timeout=120)
            load_module("9999.2")
            assert drain_record() == {"by": "gpu_upgrade", "reason": "driver upgrade"}
            until(lambda: lb_state()[VICTIM] == "drained", 90)  # booted: up, and out of rotation
            assert load.served_by[VICTIM] == served_before  # nothing while it was out, rebooting

            second = playbook("gpu_upgrade.yml", "-e", json.dumps(UPGRADE))
            words = said(second)
            assert second.returncode == 0, words[-3000:]
            assert "but needs a reboot to load it" not in words
            assert "0, Tesla T4, 550.127.05" in words  # verify: nvidia-smi sees the fact's GPU
            assert drain_record() is None
            assert lb_state() == {VICTIM: "serving", CPU_HOST: "serving"}
            until(lambda: load.served_by[VICTIM] > served_before, 30)
            time.sleep(2)
        assert load.failures == [], load.summary()
        assert installed() == "9999.2"
        assert held() == ["nvidia-driver"]
        line = "drained, upgraded, stopped for its reboot, rebooted, checked and undrained: " + load.summary()
        print("\n" + line)
        with (ROOT / ".cache" / "fleet-report.txt").open("a") as report:  # the CI run prints it
            report.write(f"GPU driver upgrade of one host: {line}\n")
    finally:
        put_back(kernel)
        if drain_record() is not None:  # a failure above: the scenario's hosts go back in service
            back = playbook("undrain.yml", "-l", VICTIM)
            assert back.returncode == 0, back.stdout[-3000:]
    wait_ready()
    assert lb_state() == {VICTIM: "serving", CPU_HOST: "serving"}
