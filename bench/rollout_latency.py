"""Where a rollout's latency goes, on the local fleet (`make demo` first). Not a test.

Keep-alive and new-connection clients load the balancer (127.0.0.1:8080) while a rolling deploy
goes to a new version and a rollback comes back, and the same with nothing happening. Each
rollout is timed per phase (Ansible's profile_tasks: stage, drain, switch and warm-up, undrain).
It runs twice: with the app hosts free to take any CPU of this machine, and with each app host
capped (`docker update --cpus`), so that a restarting host's TensorFlow start-up cannot take
its neighbour's cores. On separate servers the capped numbers are the ones that apply. The
results go into docs/benchmarks.md (its "rollout" block, headed by the commit, date and
machine; bench/benchdoc.py).

    .venv/bin/python bench/rollout_latency.py [--cpus 0.8] [--seconds 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import benchdoc

ROOT = Path(__file__).resolve().parents[1]
APPS = ["funfleet-demo-app1", "funfleet-demo-app2"]
BASE = "http://127.0.0.1:8080"
PHASES = {
    "stage": ("Ship and verify the release", "Check whether this release is already complete", "Copy the model"),
    "drain": ("Mark the host drained", "Wait for the requests in flight"),
    "switch + warm-up": ("Restart or chain-reload the app", "Wait for every worker to be ready"),
    "undrain": ("Put the host back into rotation",),
}


def fleetcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleetcheck", ROOT / "molecule" / "shared" / "fleetcheck.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleetcheck"] = module
    spec.loader.exec_module(module)
    return module


def playbook(name: str, *extra: str) -> str:
    env = {**os.environ, "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", "ANSIBLE_NOCOLOR": "1"}
    binary = Path(sys.executable).with_name("ansible-playbook")
    result = subprocess.run(
        [str(binary), str(ROOT / "playbooks" / name), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-3000:] + result.stderr[-2000:])
    return result.stdout


def phases(output: str) -> dict[str, float]:
    """Seconds per phase, summed over hosts, from profile_tasks' per-task lines."""
    totals = dict.fromkeys(PHASES, 0.0)
    for line in output.splitlines():
        match = re.match(r"^(?:\S+ : )?(.+?) -+ (\d+\.\d+)s$", line.strip())
        if not match:
            continue
        for phase, names in PHASES.items():
            if any(n in match.group(1) for n in names):
                totals[phase] += float(match.group(2))
    return totals


def measure(check: ModuleType, label: str, seconds: float, action: tuple[str, ...] | None) -> str:
    with check.Load(base=BASE, max_seconds=600) as load:
        output = playbook(*action) if action else subprocess.run(["sleep", str(seconds)], check=True)
    line = f"{label:<34} {load.summary()}"
    if action:
        line += "\n" + " " * 35 + "phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in phases(output).items())
    print(line, flush=True)
    return line


def cap(cpus: str) -> None:
    for app in APPS:
        subprocess.run(["docker", "update", f"--cpus={cpus}", app], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", default="0.8", help="CPU cap per app host for the second round")
    parser.add_argument("--seconds", type=float, default=20, help="steady-state window")
    parser.add_argument(
        "--docs", type=Path, default=benchdoc.DOC, help="the page its results block goes into; empty writes nothing"
    )
    args = parser.parse_args()
    check = fleetcheck()
    check.wait_ready(BASE)
    release = ROOT / ".cache" / "releases" / "digits" / "rollout-bench"
    if not release.exists():
        cut = [sys.executable, "-m", "inference.release_tools", "cut", str(ROOT / "files/models/digits/1"), "2"]
        subprocess.run([*cut, "--out", str(release)], check=True)
    rounds = [("no CPU cap", "0"), (f"each app host capped at {args.cpus} CPU", args.cpus)]
    lines = []
    try:
        for name, cpus in rounds:
            cap(cpus)
            print(f"== {name} ==", flush=True)
            lines.append(f"== {name} ==")
            lines.append(measure(check, "steady state", args.seconds, None))
            deploy = ("deploy.yml", "-e", f"app_release_model_src={release}")
            lines.append(measure(check, "rolling deploy to version 2", 0, deploy))
            lines.append(measure(check, "rollback to version 1", 0, ("rollback.yml",)))
    finally:
        cap("0")
    if str(args.docs) not in ("", "."):
        body = (
            "### What a rollout costs clients (the local fleet, `make demo`)\n\n```text\n" + "\n".join(lines) + "\n```"
        )
        command = " ".join(["bench/rollout_latency.py", *sys.argv[1:]])
        benchdoc.write("rollout", "bench/rollout_latency.py", command, body, args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
