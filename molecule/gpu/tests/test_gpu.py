"""The GPU path on a host whose GPU fact is forced (no GPU here), beside an untouched CPU host."""

from __future__ import annotations

import json
import re

import pytest

GPU, CPU = "funfleet-gpu-gpu1", "funfleet-gpu-cpu1"
testinfra_hosts = [GPU, CPU]


@pytest.fixture
def name(host):
    return host.backend.get_hostname()


def ini(host) -> dict[str, str]:
    lines = host.file("/etc/funfleet/uwsgi.ini").content_string.splitlines()
    return dict(line.split(" = ", 1) for line in lines if " = " in line)


def test_gpu_fact_is_installed_and_reports_this_host(host, name):
    fact = host.file("/etc/ansible/facts.d/nvidia_gpu.fact")
    assert fact.mode == 0o755
    real = json.loads(host.check_output("/etc/ansible/facts.d/nvidia_gpu.fact"))
    # The GPU host's lspci is a recorded one with a Tesla T4 (prepare.yml); the CPU host's is real.
    if name == GPU:
        assert real["count"] == 1
        assert real["models"] == ["NVIDIA Corporation TU104GL [Tesla T4]"]
    else:
        assert real["count"] == 0
    assert real["driver_loaded"] is False
    assert real["source"] == "lspci"
    assert host.package("pciutils").is_installed


def test_unit_device_access(host, name):
    unit = host.file("/etc/systemd/system/funfleet.service").content_string.splitlines()
    allowed = [line for line in unit if line.startswith("DeviceAllow=")]
    if name == GPU:
        assert "PrivateDevices=no" in unit
        # Device classes: they hold whether or not /dev/nvidia-uvm exists when the unit starts.
        assert allowed == [
            "DeviceAllow=char-nvidia-frontend rw",
            "DeviceAllow=char-nvidia-uvm rw",
            "DeviceAllow=char-nvidia-caps rw",
        ]
        assert "ExecStartPre=+-/usr/bin/nvidia-modprobe -u -c=0" in unit
    else:
        assert "PrivateDevices=yes" in unit
        assert allowed == []
        assert not [line for line in unit if line.startswith("ExecStartPre=")]
    assert "DevicePolicy=closed" in unit
    assert "KillMode=mixed" in unit


def test_worker_layout_and_tensorflow_settings(host, name):
    env = host.file("/etc/funfleet/app.env").content_string.splitlines()
    if name == GPU:
        assert ini(host)["processes"] == "2"  # funfleet_workers_per_gpu (2) x 1 GPU
        assert "FUNFLEET_DEVICE=gpu" in env  # a worker not on the GPU is not ready
        assert "FUNFLEET_GPU_MEMORY_GROWTH=1" in env
        assert "FUNFLEET_GPU_COUNT=1" in env
        # GPU workers batch: 16 threads a worker, batches of up to 16 rows.
        assert ini(host)["threads"] == "16"
        assert [line for line in env if line.startswith("FUNFLEET_BATCH")] == [
            "FUNFLEET_BATCHING=1",
            "FUNFLEET_BATCH_MAX_SIZE=16",
            "FUNFLEET_BATCH_TIMEOUT_MICROS=2000",
        ]
    else:
        assert ini(host)["processes"] == host.check_output("nproc")  # one per core
        assert "FUNFLEET_DEVICE=cpu" in env
        assert not [line for line in env if line.startswith("FUNFLEET_GPU")]
        assert "threads" not in ini(host)
        assert not [line for line in env if line.startswith("FUNFLEET_BATCH")]


def test_wheel_set_selected(host, name):
    plan = json.loads(host.file("/etc/funfleet/runtime-plan.json").content_string)
    assert plan["python_version"] == "3.11"
    if name == GPU:
        assert plan["flavor"] == "gpu"
        assert plan["requirements_file"].endswith("app/requirements-gpu.txt")
        assert "tensorflow[and-cuda]==2.21.0" in plan["requirements"].splitlines()
        assert "tensorflow-cpu" not in plan["requirements"]
    else:
        assert plan["flavor"] == "cpu"
        assert plan["requirements_file"].endswith("app/requirements.txt")
        assert 'tensorflow-cpu==2.21.0 ; platform_machine == "x86_64"' in plan["requirements"].splitlines()


def test_driver_tasks_ran_in_check_mode_on_the_gpu_host_only(host, name):
    components = [
        line.split(":", 1)[1].split()
        for line in host.file("/etc/apt/sources.list.d/debian.sources").content_string.splitlines()
        if line.startswith("Components:")
    ]
    blacklist = host.file("/etc/modprobe.d/funfleet-blacklist-nouveau.conf")
    if name == GPU:
        # The non-free driver's components are enabled for real, so the check-mode install
        # could resolve the packages; nothing was installed or blacklisted.
        assert components == [["main", "contrib", "non-free", "non-free-firmware"]] * len(components) != []
        assert "Candidate: (none)" not in host.check_output("apt-cache policy nvidia-driver")
    else:
        assert components == [["main"]] * len(components) != []
    assert not host.package("nvidia-driver").is_installed
    assert not blacklist.exists


def test_app_unit_hardening_stays_within_bounds(host, name):
    out = host.check_output("systemd-analyze security funfleet --no-pager")
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))
    # The GPU unit gives up PrivateDevices for the NVIDIA devices only; the CPU unit keeps all.
    assert score <= (2.5 if name == GPU else 2.0), out[-400:]


def test_gpu_metrics_are_collected_and_scraped_on_the_gpu_host_only(host, name):
    """What would be scraped: node exporter's textfile collector serves the GPU metrics that the
    timer writes from nvidia-smi (here nvidia-smi is absent: the collector says so, up 0)."""
    timer = host.service("funfleet-gpu-metrics.timer")
    if name == CPU:
        assert not host.file("/usr/local/sbin/funfleet-gpu-metrics").exists
        assert not host.file("/etc/systemd/system/funfleet-gpu-metrics.timer").exists
        return
    assert timer.is_enabled
    assert timer.is_running
    assert "OnUnitActiveSec=15s" in host.file("/etc/systemd/system/funfleet-gpu-metrics.timer").content_string
    host.run("systemctl start funfleet-gpu-metrics.service")
    scraped = host.check_output(
        "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:9100/metrics').read().decode())\""
    )
    assert "funfleet_gpu_metrics_up 0" in scraped
    # The DCGM-named families are written, empty without a GPU (node exporter serves only samples).
    written = host.file("/var/lib/prometheus/node-exporter/funfleet_gpu.prom").content_string
    assert "# TYPE DCGM_FI_DEV_GPU_TEMP gauge" in written
    assert "# TYPE DCGM_FI_DEV_FB_USED gauge" in written
