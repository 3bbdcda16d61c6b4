"""Helpers shared by the scenarios' testinfra checks: real HTTP through nginx, from the controller."""

from __future__ import annotations

import os
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "files" / "samples" / "digits"
BASE = os.environ.get("FUNFLEET_HTTP", "http://127.0.0.1:18080")


def sample(label: str) -> bytes:
    return (SAMPLES / f"{label}.png").read_bytes()


def predict(label: str, base: str = BASE, timeout: float = 20) -> requests.Response:
    return requests.post(f"{base}/predict", files={"image": (f"{label}.png", sample(label))}, timeout=timeout)


def wait_ready(base: str = BASE, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(f"{base}/readyz", timeout=3)
            if last.status_code == 200:
                return last.json()
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base}/readyz not 200 within {seconds}s (last: {last and last.status_code})")


def counter(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
