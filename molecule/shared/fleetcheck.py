"""Helpers shared by the scenarios' testinfra checks: real HTTP through nginx, from the controller."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
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


class Load:
    """Constant prediction load through the balancer while a block runs, bounded in requests and
    seconds. Every response that is not a 200 with the right label, and every connection error,
    is a failure. Each request opens its own connection: a balancer's nginx reload closes idle
    client keep-alive connections, and a client that reuses one must then retry (RFC 9112
    9.3.1), which python-requests does not; that race is the client's, not a dropped request.

        with Load() as load:
            ...  # deploy, kill, etc.
        assert load.failures == []
    """

    def __init__(
        self,
        base: str = BASE,
        threads: int = 4,
        max_requests: int = 50_000,
        max_seconds: float = 600,
        label: str = "7",
    ) -> None:
        self.base, self.threads, self.label = base, threads, label
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.ok = 0
        self.failures: list[str] = []
        self.served_by: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.seconds = 0.0
        self._sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _run(self, deadline: float) -> None:
        body = sample(self.label)
        with requests.Session() as session:
            while time.monotonic() < deadline and self._take():
                try:
                    r = session.post(
                        f"{self.base}/predict",
                        files={"image": ("x.png", body)},
                        headers={"Connection": "close"},
                        timeout=60,
                    )
                    good = r.status_code == 200 and r.json().get("best_prediction") == self.label
                    outcome = None if good else f"{r.status_code} {r.text[:120]}"
                except (requests.RequestException, ValueError) as exc:
                    r, outcome = None, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if outcome is None:
                        self.ok += 1
                        self.served_by[r.headers.get("X-Served-By", "?")] += 1
                        self.versions[r.json()["model"]["version"]] += 1
                    else:
                        self.failures.append(outcome)

    def __enter__(self) -> Load:
        self._started = time.monotonic()
        deadline = self._started + self.max_seconds
        self._workers = [threading.Thread(target=self._run, args=(deadline,), daemon=True) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=90)
        self.seconds = time.monotonic() - self._started

    def summary(self) -> str:
        return (
            f"{self.ok} ok, {len(self.failures)} failed in {self.seconds:.1f}s; "
            f"served by {dict(self.served_by)}; versions {dict(self.versions)}"
        )
