"""Helpers shared by the scenarios' testinfra checks: real HTTP through nginx, from the controller."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "files" / "samples" / "digits"
BASE = os.environ.get("FUNFLEET_HTTP", "http://127.0.0.1:18080")


def sh(container: str, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """A command in a test host (docker exec)."""
    result = subprocess.run(
        ["docker", "exec", container, *argv], check=False, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{container}: {argv} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def _playbook_command(name: str, *extra: str, canary: bool = False) -> tuple[list[str], dict[str, str]]:
    """A deploy judges no canary unless the test asks (canary=True): a canary's windows need
    traffic, and a fleet with a monitoring host has one by default (test_rollout_canary.py)."""
    if name == "deploy.yml" and not canary:
        extra = ("-e", "funfleet_canary=false", *extra)
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    binary = shutil.which("ansible-playbook") or str(Path(sys.executable).with_name("ansible-playbook"))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),  # this checkout's filters, as its roles
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    return [binary, "-i", str(inventory), str(ROOT / "playbooks" / name), *extra], env


def playbook(name: str, *extra: str, canary: bool = False) -> subprocess.CompletedProcess:
    """One of the repo's playbooks against the scenario's inventory."""
    cmd, env = _playbook_command(name, *extra, canary=canary)
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)


def background_playbook(name: str, *extra: str, canary: bool = False) -> subprocess.Popen:
    """The same, started in the background in a process group of its own (a test can Ctrl-C it as
    a terminal does: SIGINT to the group), its output together on ``stdout``."""
    cmd, env = _playbook_command(name, *extra, canary=canary)
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True
    )


def address(container: str) -> str:
    """A test host's address on its scenario network."""
    return sh(container, "hostname", "-I").stdout.split()[0]


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


class Load:
    """Constant prediction load through the balancer while a block runs, bounded in requests and
    seconds. Every response that is not a 200 with the right label, and every connection error,
    is a failure. `keepalive` of the threads reuse one connection each, as real clients do (a
    connection the server closes under them is a failure: python-requests does not retry a POST);
    the others open a connection per request.

    The threads share a paced rate (``rate`` requests a second, each thread on its own schedule),
    as real clients send: a keep-alive connection then sits idle between requests, which is when a
    server or balancer closing it would cost a request, and the load leaves this 2-core
    controller's CPU to the run under test (a closed loop took both cores and tripled every
    deploy's time). ``rate=None`` sends back to back.

        with Load() as load:
            ...  # deploy, kill, etc.
        assert load.failures == []
    """

    def __init__(
        self,
        *,
        base: str = BASE,
        threads: int = 4,
        keepalive: int = 2,
        max_requests: int = 50_000,
        max_seconds: float = 600,
        rate: float | None = 60,
        label: str = "7",
        model: str | None = None,
        features: dict[str, float] | None = None,
        wrong_is_failure: bool = True,
    ) -> None:
        """``model`` picks the model (/predict?model=); ``features`` sends a tabular model's JSON
        features instead of the digit image, and ``label`` is then the class it must answer.
        ``wrong_is_failure=False`` counts a 200 with another label in ``wrong`` (by the host that
        answered) rather than as a failure: a canary that answers wrong is the judge's to find."""
        self.base, self.threads, self.keepalive, self.label = base, threads, keepalive, label
        self.path = "/predict" + (f"?model={model}" if model else "")
        self.features = features
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.rate = rate
        self.ok = 0
        self.wrong_is_failure = wrong_is_failure
        self.wrong: Counter[str] = Counter()
        self.failures: list[str] = []
        self.served_by: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.latencies: list[float] = []
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

    def _run(self, deadline: float, reuse: bool) -> None:
        body = (
            {"json": self.features}
            if self.features is not None
            else {"files": {"image": ("x.png", sample(self.label))}}
        )
        headers = {} if reuse else {"Connection": "close"}
        interval = self.threads / self.rate if self.rate else 0.0
        due = time.monotonic()
        with requests.Session() as session:
            while time.monotonic() < deadline and self._take():
                started = time.monotonic()
                due = max(due, started) + interval  # a slow answer delays the next; no burst after
                try:
                    r = session.post(f"{self.base}{self.path}", **body, headers=headers, timeout=60)
                    good = r.status_code == 200 and r.json().get("best_prediction") == self.label
                    if r.status_code == 200 and not good and not self.wrong_is_failure:
                        with self._lock:
                            self.wrong[r.headers.get("X-Served-By", "?")] += 1
                        good = True
                    outcome = None if good else f"{r.status_code} {r.text[:120]}"
                except (requests.RequestException, ValueError) as exc:
                    r, outcome = None, f"{'keep-alive' if reuse else 'new connection'}: {type(exc).__name__}: {exc}"
                took = time.monotonic() - started
                with self._lock:
                    if outcome is None:
                        self.ok += 1
                        self.latencies.append(took)
                        self.served_by[r.headers.get("X-Served-By", "?")] += 1
                        self.versions[r.json()["model"]["version"]] += 1
                    else:
                        self.failures.append(outcome)
                if interval and self._stop.wait(max(0.0, due - time.monotonic())):
                    return

    def __enter__(self) -> Load:
        self._started = time.monotonic()
        deadline = self._started + self.max_seconds
        self._workers = [
            threading.Thread(target=self._run, args=(deadline, i < self.keepalive), daemon=True)
            for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def wait(self) -> None:
        """Block until the clients are done: their seconds or their requests are spent."""
        for worker in self._workers:
            worker.join()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=90)
        self.seconds = time.monotonic() - self._started

    def percentile(self, q: float) -> float:
        """Latency of successful requests in ms at quantile q (0..1); 0 when none succeeded."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    def summary(self) -> str:
        return (
            f"{self.ok} ok, {len(self.failures)} failed in {self.seconds:.1f}s "
            f"({self.keepalive} of {self.threads} clients keep-alive, "
            f"{f'{self.rate:g}/s paced' if self.rate else 'back to back'}); "
            f"p50 {self.percentile(0.5):.1f} ms, p99 {self.percentile(0.99):.1f} ms, max {self.percentile(1.0):.1f} ms; "
            f"served by {dict(self.served_by)}; versions {dict(self.versions)}"
            + (f"; wrong answers {dict(self.wrong)}" if self.wrong else "")
        )
