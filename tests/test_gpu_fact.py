"""The GPU fact (roles/nvidia/files/nvidia_gpu.fact) on recorded lspci outputs and fake /proc trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACT = ROOT / "roles" / "nvidia" / "files" / "nvidia_gpu.fact"
LSPCI = Path(__file__).parent / "fixtures" / "lspci"


def run_fact(tmp_path: Path, lspci: str | None, proc: dict[str, str] | None = None) -> dict:
    fs = tmp_path / "fs"
    for rel, text in (proc or {}).items():
        path = fs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    fs.mkdir(exist_ok=True)
    env = {**os.environ, "FUNFLEET_FS_ROOT": str(fs)}
    if lspci is not None:
        env["FUNFLEET_LSPCI_FILE"] = str(LSPCI / lspci)
    else:
        env["FUNFLEET_LSPCI_FILE"] = ""
        env["FUNFLEET_LSPCI_BIN"] = "/nonexistent/lspci"
    out = subprocess.run([sys.executable, str(FACT)], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


DRIVER_535 = {
    "proc/driver/nvidia/version": (
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
        "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n"
    ),
}


def test_no_gpu(tmp_path):
    fact = run_fact(tmp_path, "none.txt")
    assert fact == {
        "count": 0,
        "models": [],
        "gpus": [],
        "driver_loaded": False,
        "driver_version": None,
        "source": "lspci",
        "errors": [],
    }


def test_one_gpu_without_driver_ignores_its_audio_function(tmp_path):
    fact = run_fact(tmp_path, "one.txt")
    assert fact["count"] == 1
    assert fact["models"] == ["NVIDIA Corporation TU104GL [Tesla T4]"]
    assert fact["gpus"] == [
        {"slot": "01:00.0", "model": "NVIDIA Corporation TU104GL [Tesla T4]", "device_id": "1eb8", "class": "0300"}
    ]
    assert fact["driver_loaded"] is False
    assert fact["driver_version"] is None


def test_eight_gpus_with_driver_ignores_nvswitch_bridges_and_bmc_vga(tmp_path):
    fact = run_fact(tmp_path, "eight.txt", DRIVER_535)
    assert fact["count"] == 8
    assert fact["models"] == ["NVIDIA Corporation GA100 [A100 SXM4 80GB]"]
    assert [g["slot"] for g in fact["gpus"]] == [
        "07:00.0",
        "0a:00.0",
        "47:00.0",
        "4e:00.0",
        "87:00.0",
        "90:00.0",
        "b7:00.0",
        "bd:00.0",
    ]
    assert {g["class"] for g in fact["gpus"]} == {"0302"}
    assert fact["driver_loaded"] is True
    assert fact["driver_version"] == "535.104.05"


def test_non_nvidia_display_controller(tmp_path):
    fact = run_fact(tmp_path, "matrox.txt")
    assert fact["count"] == 0
    assert fact["gpus"] == []
    assert fact["source"] == "lspci"


def test_falls_back_to_proc_when_lspci_is_missing(tmp_path):
    proc = {
        **DRIVER_535,
        "proc/driver/nvidia/gpus/0000:01:00.0/information": (
            "Model: \t\t Tesla T4\nIRQ:   \t\t 130\nBus Type: \t PCIe\n"
        ),
        "proc/driver/nvidia/gpus/0000:02:00.0/information": "Model: \t\t Tesla T4\nIRQ:   \t\t 131\n",
    }
    fact = run_fact(tmp_path, None, proc)
    assert fact["count"] == 2
    assert fact["models"] == ["Tesla T4"]
    assert fact["source"] == "proc"
    assert fact["driver_version"] == "535.104.05"
    assert fact["errors"] == ["lspci not found (package pciutils)"]


def test_driver_version_from_sys_module(tmp_path):
    fact = run_fact(tmp_path, "one.txt", {"sys/module/nvidia/version": "550.90.07\n"})
    assert fact["driver_loaded"] is True
    assert fact["driver_version"] == "550.90.07"


@pytest.mark.parametrize("fixture", ["none.txt", "one.txt", "eight.txt", "matrox.txt"])
def test_output_is_one_json_object_ansible_can_read(tmp_path, fixture):
    env = {**os.environ, "FUNFLEET_LSPCI_FILE": str(LSPCI / fixture), "FUNFLEET_FS_ROOT": str(tmp_path)}
    out = subprocess.run([str(FACT)], env=env, capture_output=True, text=True, check=True).stdout
    assert out.count("\n") == 1
    assert isinstance(json.loads(out), dict)
