"""The nvidia role's care of a GPU host, against stand-ins on the GPU test host (no GPU here):
the packaged nvidia-persistenced unit as Ubuntu ships it (persistence mode off), a daemon and an
nvidia-smi faithful to the real tools' output (molecule/gpu/standins), and a local apt source of
two versions of a package named like the driver's. Each test puts the host back as it found it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
STANDINS = ROOT / "molecule" / "gpu" / "standins"
GPU = "funfleet-gpu-gpu1"
testinfra_hosts = [GPU]
UNIT = "/lib/systemd/system/nvidia-persistenced.service"
DROPIN = "/etc/systemd/system/nvidia-persistenced.service.d/funfleet-persistence-mode.conf"
WANTS = "/etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"
# apt, limited to the stand-in source: the mirror's lists and packages are not touched.
REPO = "/srv/standin-apt"
APT = (
    f"apt-get -o Dir::Etc::SourceList={REPO}/sources.list -o Dir::Etc::SourceParts=/dev/null"
    f" -o Dir::State::Lists={REPO}/lists -o Dir::Cache::archives={REPO}/archives -o APT::Get::List-Cleanup=0"
    " -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -y -q"
)


def steps(*names: str, **extra_vars: object) -> subprocess.CompletedProcess:
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    binary = shutil.which("ansible-playbook") or str(Path(sys.executable).with_name("ansible-playbook"))
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    extra = json.dumps({"nvidia_host_steps": list(names), "nvidia_dry_run": False, **extra_vars})
    cmd = [binary, "-i", str(inventory), str(ROOT / "molecule/gpu/nvidia-host.yml"), "-l", GPU, "-e", extra]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def changed(result: subprocess.CompletedProcess) -> int:
    line = next(line for line in result.stdout.splitlines() if line.startswith(GPU) and "ok=" in line)
    return int(re.search(r"changed=(\d+)", line)[1])


def said(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())


def put(source: Path, dest: str) -> None:
    subprocess.run(["docker", "cp", str(source), f"{GPU}:{dest}"], check=True, capture_output=True, timeout=60)


@pytest.fixture
def standins(host) -> Iterator[None]:
    put(STANDINS / "nvidia-smi", "/usr/bin/nvidia-smi")
    put(STANDINS / "nvidia-persistenced", "/usr/bin/nvidia-persistenced")
    put(STANDINS / "nvidia-persistenced.service", UNIT)
    host.run_expect([0], "systemctl daemon-reload")
    try:
        yield
    finally:
        host.run("systemctl stop nvidia-persistenced")
        host.run(f"rm -rf {DROPIN} {WANTS} {UNIT} /usr/bin/nvidia-smi /usr/bin/nvidia-persistenced")
        host.run("systemctl daemon-reload")


def persistence(host) -> str:
    return host.check_output("nvidia-smi --query-gpu=persistence_mode --format=csv,noheader")


def test_persistence_mode_off_is_caught_then_turned_on_and_kept(host, standins):
    # As on a fresh Ubuntu host: udev starts the packaged unit, which turns persistence mode off.
    host.run_expect([0], "systemctl start nvidia-persistenced")
    assert persistence(host) == "Disabled"

    caught = steps("verify")
    assert caught.returncode == 2, caught.stdout[-3000:]
    assert f"{GPU}: persistence mode is not enabled on 0, Tesla T4, 550.127.05, Disabled" in said(caught)

    fixed = steps("persistence", "verify")
    assert fixed.returncode == 0, fixed.stdout[-3000:]
    assert persistence(host) == "Enabled"
    dropin = host.file(DROPIN).content_string
    assert "StopWhenUnneeded=false" in dropin
    # The packaged command line (its --user) is kept, with persistence mode on instead of off.
    assert "ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --verbose --persistence-mode" in dropin
    shown = host.check_output("systemctl show -p ExecStart nvidia-persistenced")
    assert "--persistence-mode" in shown
    assert "--no-persistence-mode" not in shown
    assert host.check_output(f"readlink {WANTS}") == UNIT  # started at boot, though the packaged unit is static

    again = steps("persistence", "verify")
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed(again) == 0, again.stdout[-3000:]

    # A daemon that dies takes persistence mode with it (the stand-in, as a host where nothing
    # else set it): verify says so; the next run starts it again.
    host.run_expect([0], "systemctl stop nvidia-persistenced")
    assert persistence(host) == "Disabled"
    assert steps("verify").returncode == 2
    restarted = steps("persistence", "verify")
    assert restarted.returncode == 0, restarted.stdout[-3000:]
    assert persistence(host) == "Enabled"


def deb(host, version: str, module_for: str = "") -> str:
    """A package named like Debian's driver metapackage, at this version, in the stand-in source;
    with module_for, it ships an nvidia module for that kernel where DKMS puts one."""
    build = f"/tmp/standin-deb/nvidia-driver-{version}"
    if module_for:
        folder = f"{build}/lib/modules/{module_for}/updates/dkms"
        host.run_expect([0], f"mkdir -p {folder} && echo stand-in > {folder}/nvidia.ko")
    control = (
        f"Package: nvidia-driver\\nVersion: {version}\\nArchitecture: all\\n"
        "Maintainer: funfleet tests <tests@funfleet.invalid>\\nDescription: stand-in for the driver metapackage\\n"
    )
    host.run_expect([0], f"mkdir -p {build}/DEBIAN {REPO}/pool && printf '{control}' > {build}/DEBIAN/control")
    path = f"{REPO}/pool/nvidia-driver_{version}_all.deb"
    host.run_expect([0], f"dpkg-deb --build --root-owner-group {build} {path} >/dev/null")
    return path


def publish(host, *debs: str) -> None:
    """The source's Packages index, written as apt-ftparchive would (the fields apt needs)."""
    stanzas = []
    for path in debs:
        fields = host.check_output(f"dpkg-deb -f {path}")
        size = host.check_output(f"stat -c %s {path}")
        sha = host.check_output(f"sha256sum {path}").split()[0]
        stanzas.append(f"{fields}\nFilename: pool/{Path(path).name}\nSize: {size}\nSHA256: {sha}\n")
    host.run_expect([0], f"cat > {REPO}/Packages <<'EOF'\n" + "\n".join(stanzas) + "EOF")
    host.run_expect([0], f"mkdir -p {REPO}/lists/partial {REPO}/archives/partial")
    host.run_expect([0], f"echo 'deb [trusted=yes] file:{REPO} ./' > {REPO}/sources.list")
    host.run_expect([0], f"{APT} update")


def installed(host) -> str:
    return host.check_output("dpkg-query -W -f='${Version}' nvidia-driver")


def test_held_driver_packages_are_not_upgraded(host):
    try:
        publish(host, deb(host, "9999.1"))
        host.run_expect([0], f"{APT} install nvidia-driver")
        assert installed(host) == "9999.1"

        held = steps("hold")
        assert held.returncode == 0, held.stdout[-3000:]
        assert changed(held) == 2, held.stdout[-3000:]  # the hold, and unattended-upgrades' blacklist
        assert host.check_output("apt-mark showhold").split() == ["nvidia-driver"]
        blacklist = host.file("/etc/apt/apt.conf.d/51funfleet-nvidia-hold").content_string
        assert '"^nvidia-";' in blacklist
        assert "Unattended-Upgrade::Package-Blacklist" in blacklist
        again = steps("hold")
        assert again.returncode == 0, again.stdout[-3000:]
        assert changed(again) == 0, again.stdout[-3000:]

        # A newer driver reaches the source: routine upgrades keep the held one.
        publish(host, deb(host, "9999.1"), deb(host, "9999.2"))
        host.run_expect([0], f"{APT} upgrade")
        host.run_expect([0], f"{APT} dist-upgrade")
        assert installed(host) == "9999.1"
        # Without the hold the same upgrade takes it: the hold is what kept it.
        host.run_expect([0], "apt-mark unhold nvidia-driver")
        host.run_expect([0], f"{APT} upgrade")
        assert installed(host) == "9999.2"
    finally:
        host.run("apt-mark unhold nvidia-driver; dpkg --purge nvidia-driver")
        host.run(f"rm -rf {REPO} /tmp/standin-deb /etc/apt/apt.conf.d/51funfleet-nvidia-hold")


BOOT_KERNEL = "6.1.0-99-standin"
SYSTEM_SOURCE = "/etc/apt/sources.list.d/funfleet-standin.list"


def test_an_upgrade_needs_the_module_for_the_kernel_that_will_boot_and_holds_again(host):
    """The upgrade entry point (playbooks/gpu_upgrade.yml runs it on a drained host): a held
    driver goes to its newest where the kernel that will boot (/boot/vmlinuz) has its module, and
    is held again; a newer one without the module fails the host before any reboot, held again."""
    # The kernel's own package's files: its modules folder outlives the driver package's module.
    host.run_expect([0], f"mkdir -p /lib/modules/{BOOT_KERNEL} /boot && touch /boot/vmlinuz-{BOOT_KERNEL}")
    host.run_expect([0], f"touch /lib/modules/{BOOT_KERNEL}/modules.dep")
    host.run_expect([0], f"ln -sfn vmlinuz-{BOOT_KERNEL} /boot/vmlinuz")
    try:
        first = deb(host, "9999.1", module_for=BOOT_KERNEL)
        host.run_expect([0], f"dpkg -i {first} && apt-mark hold nvidia-driver")  # as the hold entry point does
        publish(host, first, deb(host, "9999.2", module_for=BOOT_KERNEL))
        host.run_expect([0], f"echo 'deb [trusted=yes] file:{REPO} ./' > {SYSTEM_SOURCE}")

        upgraded = steps("upgrade", nvidia_upgrade_packages=["nvidia-driver"])
        assert upgraded.returncode == 0, upgraded.stdout[-3000:]
        assert installed(host) == "9999.2"
        assert host.check_output("apt-mark showhold").split() == ["nvidia-driver"]
        assert f"{BOOT_KERNEL}: /lib/modules/{BOOT_KERNEL}/updates/dkms/nvidia.ko" in said(upgraded)

        # 9999.3 was built without the module for that kernel (a DKMS build that failed).
        publish(host, first, deb(host, "9999.2", module_for=BOOT_KERNEL), deb(host, "9999.3"))
        broken = steps("upgrade", nvidia_upgrade_packages=["nvidia-driver"])
        assert broken.returncode == 2, broken.stdout[-3000:]
        assert f"the kernel that will boot ({BOOT_KERNEL}) has no nvidia module" in said(broken)
        assert host.check_output("apt-mark showhold").split() == ["nvidia-driver"]  # held again
    finally:
        host.run("apt-mark unhold nvidia-driver; dpkg --purge nvidia-driver")
        host.run(f"rm -rf {REPO} /tmp/standin-deb {SYSTEM_SOURCE} /var/lib/apt/lists/_srv_standin-apt_*")
        host.run(f"rm -rf /lib/modules/{BOOT_KERNEL} /boot/vmlinuz /boot/vmlinuz-{BOOT_KERNEL}")
        host.run("rm -f /etc/apt/apt.conf.d/51funfleet-nvidia-hold")


def scrape(host) -> list[str]:
    return host.check_output(
        "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:9100/metrics').read().decode())\""
    ).splitlines()


METRICS_DROPIN = "/etc/systemd/system/funfleet-gpu-metrics.service.d/test-identifier.conf"
GATE = "/var/lib/funfleet-gpu-health/unhealthy.json"  # funfleet_gpu_gate_file's default


def xid_count(lines: list[str], series: str) -> float:
    return next((float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(series + " ")), 0.0)


def test_an_xid_in_the_kernel_log_is_exported_on_its_gpu(host, standins):
    """An XID 79 line in the driver's format: a container cannot write the host's kernel log, so
    the collector is told (a drop-in, for this test only) to read lines logged under a test name
    too. Node exporter serves the XID on the GPU whose PCI address it names, as DCGM's gauge and
    as a count, once however often the collector runs; the same line logged by a user under the
    kernel's name is not the kernel's, and counts nothing."""
    # As node exporter serves them: labels in name order.
    labels = 'UUID="GPU-5e7a1f3c-0b2d-4c6e-9a8f-1d2e3f4a5b6c",gpu="0",modelName="Tesla T4"'
    xid79 = f'funfleet_gpu_xid_errors_total{{{labels},pci_bus_id="0:01:00",xid="79"}}'
    host.run_expect([0], f"mkdir -p {Path(METRICS_DROPIN).parent}")
    host.run_expect(
        [0],
        f"printf '[Service]\\nEnvironment=FUNFLEET_GPU_METRICS_TEST_IDENTIFIER=funfleet-xid-standin\\n' > {METRICS_DROPIN}",
    )
    host.run_expect([0], "systemctl daemon-reload")
    try:
        host.run_expect([0], "systemctl start funfleet-gpu-metrics.service")
        before = xid_count(scrape(host), xid79)
        line = "NVRM: Xid (PCI:0000:01:00): {}, pid=2412, name=uwsgi, GPU has fallen off the bus."
        host.run_expect([0], f"logger -t funfleet-xid-standin -p kern.err '{line.format(79)}'")
        host.run_expect([0], f"logger -t kernel -p kern.err '{line.format(48)}'")  # a user, not the kernel
        for _ in range(2):
            host.run_expect([0], "systemctl start funfleet-gpu-metrics.service")
        lines = scrape(host)
        # The same run judged the host: its health gate holds the XID, until root acknowledges a reset.
        gate = json.loads(host.file(GATE).content_string)
        gate_mode = host.file(GATE).mode
        acknowledged = host.run("funfleet-gpu-metrics --acknowledge")
        after = scrape(host)
    finally:
        host.run(f"rm -f {METRICS_DROPIN}")
        host.run("systemctl daemon-reload")
    assert "funfleet_gpu_metrics_up 1" in lines
    assert "funfleet_gpu_count 1" in lines
    assert "funfleet_gpu_count_provisioned 1" in lines  # the GPU fact's count, from the fleet plan
    assert f"DCGM_FI_DEV_GPU_TEMP{{{labels}}} 41" in lines  # every field of the query accepted
    assert f'DCGM_FI_DEV_XID_ERRORS{{{labels},pci_bus_id="0:01:00"}} 79' in lines, [
        x for x in lines if "XID" in x.upper()
    ]
    assert xid_count(lines, xid79) == before + 1
    assert not any('xid="48"' in x for x in lines)
    assert gate["code"] == "gpu_unhealthy"
    assert gate["reasons"] == ["GPU 0 (0:01:00): XID 79 (GPU has fallen off the bus), 1 this boot"], gate
    assert "funfleet_gpu_out_of_rotation 1" in lines
    assert gate_mode == 0o644  # nginx's workers read it
    assert acknowledged.rc == 0, acknowledged.stdout + acknowledged.stderr
    assert not host.file(GATE).exists
    assert "funfleet_gpu_healthy 1" in after
    assert xid_count(after, xid79) == 0  # forgotten, as a reboot would
