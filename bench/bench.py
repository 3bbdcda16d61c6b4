"""Throughput benchmark: prints a table. Not a test; numbers are ratios within one run.

Measures, on this machine, in one run:
  raw     the compiled model call at batch 1 (and 32), no HTTP: the ceiling;
  funfleet  our app under uWSGI (master, lazy-apps, 2 workers, TF threads 1/worker);
  gunicorn  our app under gunicorn, 2 sync workers (a common hand-rolled setup);
  flask-dev the old recipe: Flask dev server, model.predict() per request;
at concurrency 1, 4 and 16 with wrk (loopback, each run bounded to --seconds), multipart
uploads of a held-out digit. Prints served/raw at each concurrency.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
MODEL_DIR = ROOT / "files" / "models" / "digits" / "1"
SAMPLE = ROOT / "files" / "samples" / "digits" / "7.png"
BIN = Path(sys.executable).parent
BOUNDARY = "funfleetbenchboundary"


def raw_throughput(seconds: float) -> dict[int, float]:
    sys.path.insert(0, str(APP))
    from inference.config import Settings
    from inference.preprocess import decode_image
    from inference.runtime import ModelRuntime

    rt = ModelRuntime(Settings.from_env({"model_dir": str(MODEL_DIR)}))
    rt.load()
    one = decode_image(SAMPLE.read_bytes(), rt.release.input, 1 << 24)[None]
    out = {}
    for batch in (1, 32):
        x = one.repeat(batch, axis=0)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            rt.predict_batch(x)
            n += 1
        out[batch] = n * batch / (time.perf_counter() - start)
    return out


def wrk_script(tmp: Path) -> Path:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="7.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + SAMPLE.read_bytes()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    escaped = "".join(f"\\{b:03d}" for b in body)
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={BOUNDARY}"\n'
        f'wrk.body = "{escaped}"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.errors.status,'
        " summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,"
        " latency:percentile(50), latency:percentile(99), summary.duration))\n"
        "end\n"
    )
    return script


def load(url: str, conns: int, seconds: int, script: Path) -> dict:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(conns, 2)),
            "-c",
            str(conns),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    reqs, status_err, sock_err, p50, p99, dur = map(int, re.search(r"RESULT (.*)", out).group(1).split())
    return {"rps": reqs / (dur / 1e6), "errors": status_err + sock_err, "p50": p50 / 1000, "p99": p99 / 1000}


def start(cmd: list[str], port: int, env: dict, cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = requests.post(
                f"http://127.0.0.1:{port}/predict", files={"image": ("7.png", SAMPLE.read_bytes())}, timeout=5
            )
            if r.status_code == 200:
                # Give every worker time to finish loading before measuring.
                time.sleep(8)
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{cmd[0]} did not serve on {port}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description="funfleet throughput benchmark")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each load run (bounded)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk (make setup does)")
    levels = [int(c) for c in args.concurrency.split(",")]

    raw = raw_throughput(3.0)
    tmp = Path(tempfile.mkdtemp(prefix="funfleet-bench-"))
    script = wrk_script(tmp)
    env = {**os.environ, "FUNFLEET_MODEL_DIR": str(MODEL_DIR), "TF_CPP_MIN_LOG_LEVEL": "2"}
    w = str(args.workers)
    servers = {
        "funfleet (uWSGI)": lambda port: (
            [
                str(BIN / "uwsgi"),
                "--master",
                "--lazy-apps",
                "--processes",
                w,
                "--need-app",
                "--die-on-term",
                "--single-interpreter",
                "--thunder-lock",
                "--disable-logging",
                "--http11-socket",
                f"127.0.0.1:{port}",
                "--module",
                "wsgi:app",
                "--listen",
                "128",
            ],
            {**env, "PROMETHEUS_MULTIPROC_DIR": str(Path(tempfile.mkdtemp(dir=tmp)))},
            APP,
        ),
        "gunicorn (same app)": lambda port: (
            [str(BIN / "gunicorn"), "-w", w, "-b", f"127.0.0.1:{port}", "wsgi:app"],
            {**env, "PROMETHEUS_MULTIPROC_DIR": str(Path(tempfile.mkdtemp(dir=tmp)))},
            APP,
        ),
        "flask dev + predict()": lambda port: (
            [sys.executable, str(ROOT / "bench" / "peer_flask_predict.py"), str(port)],
            env,
            ROOT,
        ),
    }
    rows = []
    for i, (name, make) in enumerate(servers.items()):
        port = 18500 + i
        cmd, penv, cwd = make(port)
        proc = start(cmd, port, penv, cwd)
        try:
            for c in levels:
                rows.append((name, c, load(f"http://127.0.0.1:{port}/predict", c, args.seconds, script)))
        finally:
            stop(proc)

    print(
        f"\nraw compiled call: batch 1 = {raw[1]:.0f} img/s, batch 32 = {raw[32]:.0f} img/s "
        f"({os.cpu_count()} cores, wrk on the same cores)"
    )
    print(f"{'server':24} {'conc':>4} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'served/raw':>10}")
    for name, c, r in rows:
        print(
            f"{name:24} {c:>4} {r['rps']:>8.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['errors']:>6} "
            f"{r['rps'] / raw[1]:>10.2f}"
        )
    ours = {c: r["rps"] for n, c, r in rows if n.startswith("funfleet")}
    for name in list(servers)[1:]:
        theirs = {c: r["rps"] for n, c, r in rows if n == name}
        print(f"funfleet / {name} at c={levels[-1]}: {ours[levels[-1]] / theirs[levels[-1]]:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
