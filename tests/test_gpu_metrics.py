"""The GPU metrics collector turns nvidia-smi's CSV into DCGM-named gauges for node exporter."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys

from role_helpers import ROOT

SCRIPT = ROOT / "roles" / "exporters" / "files" / "funfleet-gpu-metrics"


def collector():
    loader = importlib.machinery.SourceFileLoader("funfleet_gpu_metrics", str(SCRIPT))
    spec = importlib.util.spec_from_loader("funfleet_gpu_metrics", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_two_gpus_as_dcgm_names():
    text = collector().render((ROOT / "tests" / "fixtures" / "nvidia-smi" / "two.csv").read_text())
    labels0 = 'gpu="0",UUID="GPU-6f1a3c2e-0000-1111-2222-333344445555",modelName="NVIDIA H100 80GB HBM3"'
    labels1 = 'gpu="1",UUID="GPU-7a2b4d3f-0000-1111-2222-333344445555",modelName="NVIDIA H100 80GB HBM3"'
    lines = text.splitlines()
    assert "funfleet_gpu_metrics_up 1" in lines
    assert f"DCGM_FI_DEV_GPU_TEMP{{{labels0}}} 41" in lines
    assert f"DCGM_FI_DEV_GPU_UTIL{{{labels0}}} 87" in lines
    assert f"DCGM_FI_DEV_FB_USED{{{labels0}}} 60512" in lines
    assert f"DCGM_FI_DEV_FB_FREE{{{labels1}}} 80055" in lines
    assert not any(line.startswith('DCGM_FI_DEV_GPU_UTIL{gpu="1"') for line in lines)  # [N/A]


def test_no_nvidia_smi_reads_down(tmp_path):
    out = tmp_path / "gpu.prom"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    text = out.read_text()
    assert "funfleet_gpu_metrics_up 0" in text
    assert "# TYPE DCGM_FI_DEV_GPU_TEMP gauge" in text
    assert "DCGM_FI_DEV_GPU_TEMP{" not in text
