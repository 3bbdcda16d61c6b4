"""The GPU metrics collector turns nvidia-smi's CSV into DCGM-named gauges for node exporter."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys

import yaml

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


# The health verdict: the same readings decide whether the host may take traffic.


def test_a_healthy_host_has_no_problems(monkeypatch):
    monkeypatch.setenv("FUNFLEET_GPU_PROVISIONED", "1")
    module = collector()
    one = (FIXTURES / "two.csv").read_text().splitlines()[0]
    remapped = (FIXTURES / "remapped-rows.csv").read_text().splitlines()[0]
    assert module.problems(one, {"0:3b:00": {"13": 3, "43": 1}}, remapped) == []  # restart-class XIDs only


def test_every_reason_to_take_the_host_out_is_named(monkeypatch):
    monkeypatch.setenv("FUNFLEET_GPU_PROVISIONED", "4")
    module = collector()
    found = module.problems(
        (FIXTURES / "two.csv").read_text(),
        {"0:86:00": {"13": 2, "79": 1}, "0:af:00": {"48": 1}},
        (FIXTURES / "remapped-rows.csv").read_text(),
    )
    assert found == [
        "nvidia-smi lists 2 of the 4 GPUs provisioned",
        "GPU 1 (0:86:00): 1 double-bit ECC errors since the driver loaded",
        "GPU 1 (0:86:00): row remapping failed",
        "GPU 1 (0:86:00): XID 79 (GPU has fallen off the bus), 1 this boot",
        "the GPU at 0:af:00: XID 48 (double-bit ECC error), 1 this boot",
    ]
    # No answer from nvidia-smi is sick only where the driver is loaded (else: not rebooted into it yet).
    monkeypatch.setenv("FUNFLEET_GPU_DRIVER_PROC", str(FIXTURES / "two.csv"))  # a file that exists
    assert module.problems(None) == [
        "nvidia-smi does not answer while the driver is loaded (a GPU fell off the bus, or hangs)"
    ]
    monkeypatch.setenv("FUNFLEET_GPU_DRIVER_PROC", str(FIXTURES / "absent"))
    assert module.problems(None) == []


def test_what_nvidia_smi_alone_says_counts_from_its_second_run_in_a_row():
    module = collector()
    short, xid = "nvidia-smi lists 1 of the 2 GPUs provisioned", "GPU 0 (0:3b:00): XID 79 (...), 1 this boot"
    assert module.settle([short, xid], []) == [xid]
    assert module.settle([short, xid], [short]) == [short, xid]


def test_the_reset_codes_are_a_setting(monkeypatch):
    monkeypatch.setenv("FUNFLEET_GPU_RESET_XIDS", "13")
    one = (FIXTURES / "two.csv").read_text().splitlines()[0]
    found = collector().problems(one, {"0:3b:00": {"13": 1, "79": 1}})
    assert [reason.split(": ", 1)[1] for reason in found] == ["XID 13 (its action is a GPU reset), 1 this boot"]


def test_one_list_of_reset_codes_for_the_gate_and_the_alert():
    defaults = {
        role: yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
        for role in ("funfleet", "exporters", "monitoring")
    }
    codes = defaults["funfleet"]["funfleet_gpu_reset_xids"]
    assert defaults["exporters"]["exporters_gpu_reset_xids"] == codes
    assert defaults["monitoring"]["monitoring_gpu_xid_reset"] == codes
    assert ",".join(str(code) for code in codes) == collector().RESET_XIDS_DEFAULT
    assert set(collector().XID_NAMES) == {str(code) for code in codes}


FAKE_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=*) cat "$FAKE_CSV" ;;
  *) echo "Field is not supported" >&2; exit 2 ;;
esac
"""


def run_collector(tmp_path, provisioned: int, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    (tmp_path / "bin").mkdir(exist_ok=True)
    (tmp_path / "bin" / "nvidia-smi").write_text(FAKE_SMI)
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "one.csv").write_text((FIXTURES / "two.csv").read_text().splitlines()[0] + "\n")
    out = tmp_path / "gpu.prom"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        env={
            "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
            "FAKE_CSV": str(tmp_path / "one.csv"),
            "FUNFLEET_GPU_METRICS_STATE": str(tmp_path / "state"),
            "FUNFLEET_GPU_PROVISIONED": str(provisioned),
            "FUNFLEET_GPU_GATE": str(tmp_path / "gate.json"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, out.read_text()


def test_the_gate_file_holds_the_reasons_until_the_host_is_healthy(tmp_path):
    result, text = run_collector(tmp_path, provisioned=2)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "gate.json").exists()  # one short reading is not enough
    assert "funfleet_gpu_out_of_rotation 0" in text.splitlines()
    result, text = run_collector(tmp_path, provisioned=2)
    assert result.returncode == 0, result.stderr
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["code"] == "gpu_unhealthy"
    assert gate["ready"] is False
    assert gate["reasons"] == ["nvidia-smi lists 1 of the 2 GPUs provisioned"]
    assert "unhealthy: nvidia-smi lists 1 of the 2" in result.stderr  # in the unit's journal
    assert "funfleet_gpu_healthy 0" in text.splitlines()
    assert "funfleet_gpu_out_of_rotation 1" in text.splitlines()
    assert oct((tmp_path / "gate.json").stat().st_mode & 0o777) == "0o644"  # nginx's workers read it
    # The same reasons again: the file is left alone, so "since" is when the host went out.
    (tmp_path / "gate.json").write_text(json.dumps({**gate, "since": "then"}))
    run_collector(tmp_path, provisioned=2)
    assert json.loads((tmp_path / "gate.json").read_text())["since"] == "then"
    # Healthy: no file, and the host serves again.
    result, text = run_collector(tmp_path, provisioned=1)
    assert not (tmp_path / "gate.json").exists()
    assert "funfleet_gpu_healthy 1" in text.splitlines()
    assert "funfleet_gpu_out_of_rotation 0" in text.splitlines()


def test_an_acknowledged_reset_forgets_this_boots_xids(tmp_path):
    """After a GPU reset, root's --acknowledge leaves a request the unit's next run takes: the
    boot's XIDs are forgotten (as a reboot would), and the gate opens if nothing else is wrong."""
    module = collector()
    (tmp_path / "state").mkdir()
    state = {"boot": module.boot_id(), "xids": {"0:3b:00": {"79": 1}}, "gpus": {}}
    (tmp_path / "state" / "state.json").write_text(json.dumps(state))
    run_collector(tmp_path, provisioned=1)
    assert "XID 79" in (tmp_path / "gate.json").read_text()
    (tmp_path / "state" / "acknowledge").write_text("now\n")
    result, text = run_collector(tmp_path, provisioned=1)
    assert not (tmp_path / "gate.json").exists(), result.stderr
    assert not (tmp_path / "state" / "acknowledge").exists()
    assert json.loads((tmp_path / "state" / "state.json").read_text())["xids"] == {}
    assert "funfleet_gpu_healthy 1" in text.splitlines()


def test_a_gate_that_cannot_be_written_is_loud_and_the_metrics_still_go_out(tmp_path):
    gate = str(tmp_path / "missing-folder" / "gate.json")
    run_collector(tmp_path, provisioned=2, FUNFLEET_GPU_GATE=gate)
    result, text = run_collector(tmp_path, provisioned=2, FUNFLEET_GPU_GATE=gate)
    assert result.returncode == 1
    assert f"cannot write the health gate {gate}" in result.stderr
    assert "funfleet_gpu_healthy 0" in text.splitlines()
    assert "funfleet_gpu_out_of_rotation 0" in text.splitlines()  # what is, not what should be
