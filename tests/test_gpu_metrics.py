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


FIXTURES = ROOT / "tests" / "fixtures" / "nvidia-smi"
LABELS0 = 'gpu="0",UUID="GPU-6f1a3c2e-0000-1111-2222-333344445555",modelName="NVIDIA H100 80GB HBM3"'
LABELS1 = 'gpu="1",UUID="GPU-7a2b4d3f-0000-1111-2222-333344445555",modelName="NVIDIA H100 80GB HBM3"'


def test_two_gpus_as_dcgm_names():
    text = collector().render((FIXTURES / "two.csv").read_text(), remapped=(FIXTURES / "remapped-rows.csv").read_text())
    lines = text.splitlines()
    assert "funfleet_gpu_metrics_up 1" in lines
    assert f"DCGM_FI_DEV_GPU_TEMP{{{LABELS0}}} 41" in lines
    assert f"DCGM_FI_DEV_GPU_UTIL{{{LABELS0}}} 87" in lines
    assert f"DCGM_FI_DEV_FB_USED{{{LABELS0}}} 60512" in lines
    assert f"DCGM_FI_DEV_FB_FREE{{{LABELS1}}} 80055" in lines
    assert not any(line.startswith('DCGM_FI_DEV_GPU_UTIL{gpu="1"') for line in lines)  # [N/A]
    assert "funfleet_gpu_count 2" in lines
    assert not any(line.startswith("funfleet_gpu_count_provisioned ") for line in lines)  # not set here
    assert f"DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{{{LABELS1}}} 12" in lines
    assert f"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{LABELS1}}} 1" in lines
    assert "# TYPE DCGM_FI_DEV_ECC_DBE_VOL_TOTAL counter" in lines
    # Row remapping comes from its own query, matched by bus.
    assert f"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS{{{LABELS1}}} 3" in lines
    assert f"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{LABELS1}}} 1" in lines
    assert f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{LABELS0}}} 0" in lines
    assert f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{LABELS1}}} 1" in lines


def test_a_gpu_without_row_remapping_still_reports_the_rest():
    lines = collector().render((FIXTURES / "two.csv").read_text(), remapped=None).splitlines()
    assert f"DCGM_FI_DEV_GPU_TEMP{{{LABELS0}}} 41" in lines
    assert not any(line.startswith("DCGM_FI_DEV_ROW_REMAP_FAILURE{") for line in lines)


def test_xid_events_from_the_kernel_log_per_gpu():
    """The driver's XID lines name the GPU by PCI bus (0000:86:00), nvidia-smi by 00000000:86:00.0:
    the events land on that GPU, the last code as DCGM's gauge, every code counted; an XID of a
    GPU never listed is still counted, by its bus."""
    module = collector()
    log = (FIXTURES / "xid-kernel.log").read_text().splitlines()
    xids = module.read_xids(log, {})
    assert xids == {"0:86:00": {"13": 1, "79": 1}, "0:5e:00": {"48": 1}}
    xids = module.read_xids(["NVRM: Xid (PCI:0000:86:00): 13, pid=1, name=uwsgi, again"], xids)
    assert xids["0:86:00"] == {"79": 1, "13": 2}  # 13 is now the last one seen
    lines = module.render((FIXTURES / "two.csv").read_text(), xids).splitlines()
    gpu1 = f'{LABELS1},pci_bus_id="0:86:00"'
    assert f"DCGM_FI_DEV_XID_ERRORS{{{gpu1}}} 13" in lines
    assert f'funfleet_gpu_xid_errors_total{{{gpu1},xid="79"}} 1' in lines
    assert f'funfleet_gpu_xid_errors_total{{{gpu1},xid="13"}} 2' in lines
    assert 'funfleet_gpu_xid_errors_total{gpu="",UUID="",modelName="",pci_bus_id="0:5e:00",xid="48"} 1' in lines
    assert not any(line.startswith('DCGM_FI_DEV_XID_ERRORS{gpu="0"') for line in lines)


def test_an_xid_keeps_its_series_when_nvidia_smi_no_longer_answers():
    """After an XID 79 nvidia-smi usually fails ("GPU is lost"): the count keeps the labels of the
    GPU as last seen, so it stays the same series (an alert on it does not restart)."""
    module = collector()
    known = module.identities(module.parse((FIXTURES / "two.csv").read_text()))
    xids = {"0:86:00": {"79": 1}}
    before = module.render((FIXTURES / "two.csv").read_text(), xids).splitlines()
    after = module.render(None, xids, known=known).splitlines()
    series = f'funfleet_gpu_xid_errors_total{{{LABELS1},pci_bus_id="0:86:00",xid="79"}} 1'
    assert series in before
    assert series in after
    assert "funfleet_gpu_metrics_up 0" in after
    assert not any(line.startswith("funfleet_gpu_count ") for line in after)


def test_no_nvidia_smi_reads_down(tmp_path):
    out = tmp_path / "gpu.prom"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        env={"PATH": str(tmp_path), "FUNFLEET_GPU_METRICS_STATE": str(tmp_path / "state")},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    text = out.read_text()
    assert "funfleet_gpu_metrics_up 0" in text
    assert "# TYPE DCGM_FI_DEV_GPU_TEMP gauge" in text
    assert "DCGM_FI_DEV_GPU_TEMP{" not in text
    assert "funfleet_gpu_count" not in text.replace("# HELP funfleet_gpu_count", "").replace(
        "# TYPE funfleet_gpu_count", ""
    )


def test_the_provisioned_count_is_exported_beside_the_listed_one(monkeypatch):
    monkeypatch.setenv("FUNFLEET_GPU_PROVISIONED", "4")
    lines = collector().render((ROOT / "tests" / "fixtures" / "nvidia-smi" / "two.csv").read_text()).splitlines()
    assert "funfleet_gpu_count_provisioned 4" in lines
    assert "funfleet_gpu_count 2" in lines  # FunfleetGpuMissing: 2 < 4
