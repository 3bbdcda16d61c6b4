"""What the roles would install on Debian 12, Ubuntu 22.04 and Ubuntu 24.04, CPU and GPU hosts,
without such hosts: the roles' resolve tasks run against forced distribution and GPU facts
(tests/resolve/), and pip's own marker rules turn the chosen requirements file into a wheel set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from role_helpers import HOSTS, ROOT

COMMON = {
    "flask": "3.1.3",
    "werkzeug": "3.1.9",
    "prometheus-client": "0.26.0",
    "pyuwsgi": "2.0.30.post1",
    "ai-edge-litert": "2.3.0",
}
MODERN = {"keras": "3.15.1", "numpy": "2.4.6", "pillow": "13.0.0", "scikit-learn": "1.9.1", "onnxruntime": "1.32.0"}
PY310 = {"keras": "3.12.4", "numpy": "2.2.6", "pillow": "12.3.0", "scikit-learn": "1.7.2", "onnxruntime": "1.23.2"}

EXPECTED = {
    "debian12-cpu": ("3.11", "2_36", "cpu", MODERN),
    "debian12-gpu": ("3.11", "2_36", "gpu", MODERN),
    "ubuntu22-cpu": ("3.10", "2_35", "cpu", PY310),
    "ubuntu22-gpu": ("3.10", "2_35", "gpu", PY310),
    "ubuntu24-cpu": ("3.12", "2_39", "cpu", MODERN),
    "ubuntu24-gpu": ("3.12", "2_39", "gpu", MODERN),
}
DRIVER = {
    "debian12": (
        ["contrib", "non-free", "non-free-firmware"],
        ["linux-headers-amd64", "nvidia-driver", "firmware-misc-nonfree", "nvidia-persistenced"],
    ),
    "ubuntu22": (["restricted"], ["nvidia-driver-550-server", "nvidia-utils-550-server"]),
    "ubuntu24": (["restricted"], ["nvidia-driver-550-server", "nvidia-utils-550-server"]),
}
GPUS = {"debian12-gpu": 1, "ubuntu22-gpu": 4, "ubuntu24-gpu": 8}
# CPU hosts' default workers (16 vCPUs each): one per core, as many as fit in memory at 768 MiB
# each after 1024 MiB kept back, at least one. 64 GiB: the 16 cores; 4 GiB: 4; 1.5 GiB: 1.
CPU_WORKERS = {"debian12-cpu": 16, "ubuntu22-cpu": 4, "ubuntu24-cpu": 1}


def wheel_set(requirements: Path, python_version: str) -> dict[str, str]:
    """The pins pip would take from a requirements file on that Python (x86_64 Linux)."""
    env = {"python_version": python_version, "platform_machine": "x86_64", "sys_platform": "linux"}
    pins = {}
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            name = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
            pins[name] = str(req.specifier).removeprefix("==")
    return pins


@pytest.mark.parametrize("host", HOSTS)
def test_python_runtime_plan(plans, host):
    python, glibc, flavor, pins = EXPECTED[host]
    plan = plans[host]["python_runtime"]
    assert plan["python_version"] == python
    assert plan["packages"] == ["python3", "python3-venv", "python3-pip"]
    assert plan["flavor"] == flavor
    wanted = "requirements-gpu.txt" if flavor == "gpu" else "requirements.txt"
    assert Path(plan["requirements_file"]) == ROOT / "app" / wanted
    args = plan["pip_download_args"]
    assert f"--python-version={python}" in args
    assert f"--abi=cp{python.replace('.', '')}" in args
    platforms = [a.removeprefix("--platform=") for a in args if a.startswith("--platform=")]
    assert platforms[0] == "manylinux_2_17_x86_64"
    assert platforms[-2:] == [f"manylinux_{glibc}_x86_64", "manylinux2014_x86_64"]
    tensorflow = {"tensorflow[and-cuda]": "2.21.0"} if flavor == "gpu" else {"tensorflow-cpu": "2.21.0"}
    assert wheel_set(Path(plan["requirements_file"]), python) == {**COMMON, **pins, **tensorflow}


@pytest.mark.parametrize("host", HOSTS)
def test_driver_plan(plans, host):
    components, packages = DRIVER[host.split("-")[0]]
    assert plans[host]["nvidia"] == {"source": "distro", "components": components, "packages": packages}


@pytest.mark.parametrize("host", HOSTS)
def test_unit_layout(plans, host):
    plan = plans[host]["uwsgi"]
    unit = plan["unit"].splitlines()
    if host in GPUS:
        assert plan["processes"] == 2 * GPUS[host]
        assert plan["gpu_device_access"] is True
        assert "PrivateDevices=no" in unit
        assert "DeviceAllow=char-nvidia-frontend rw" in unit
        assert f"FUNFLEET_GPU_COUNT={GPUS[host]}" in plan["env"].splitlines()
        assert "FUNFLEET_BATCHING=1" in plan["env"].splitlines()  # GPU workers batch
    else:
        assert plan["processes"] == CPU_WORKERS[host]
        assert plan["gpu_device_access"] is False
        assert "PrivateDevices=yes" in unit
        assert not [line for line in unit if line.startswith("DeviceAllow=")]
        assert "FUNFLEET_DEVICE=cpu" in plan["env"].splitlines()
        assert not [line for line in plan["env"].splitlines() if line.startswith("FUNFLEET_BATCH")]
    # The rest of the hardening is the same on both.
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=", "DevicePolicy=closed"):
        assert line in unit


INVENTORY = yaml.safe_load((ROOT / "tests" / "resolve" / "inventory.yml").read_text())
MEMORY = {host: spec["memory"] for host, spec in INVENTORY["all"]["children"]["app"]["hosts"].items()}


@pytest.mark.parametrize("host", HOSTS)
def test_out_of_memory_takes_a_worker_not_the_host(plans, host):
    """MemoryMax never above the host's memory less 512 MiB for nginx, sshd and the rest (the
    old default, 2560 MiB a worker and 512, allowed 5.5 GiB on debian12-gpu's 4 GiB);
    workers first for the kernel's OOM killer; one worker killed, not the service stopped."""
    unit = plans[host]["uwsgi"]["unit"].splitlines()
    memory_max = next(int(line.split("=")[1].rstrip("M")) for line in unit if line.startswith("MemoryMax="))
    assert memory_max <= MEMORY[host] - 512
    assert memory_max == min(plans[host]["uwsgi"]["processes"] * 2560 + 512, MEMORY[host] - 512)
    assert "OOMScoreAdjust=500" in unit
    assert "OOMPolicy=continue" in unit
    assert "LogRateLimitIntervalSec=0" in unit


@pytest.mark.parametrize("host", HOSTS)
def test_the_memory_check_counts_the_workers_uwsgi_runs(plans, host):
    """app_release's memory check (in plays without the uwsgi role) counts the workers uWSGI runs:
    both take the fleet plan's one worker count."""
    assert plans[host]["app_release_workers"] == plans[host]["uwsgi"]["processes"]
