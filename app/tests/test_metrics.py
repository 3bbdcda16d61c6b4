"""Metrics that tell the truth across worker processes: a worker that is gone stops counting as
ready (its gauges read 0, its counters stay), and uWSGI's stats reach /metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from helpers import APP_DIR

WORKER = textwrap.dedent(
    """
    import os, sys
    from inference import metrics
    metrics.start_worker()
    metrics.MODEL_READY.labels("digits", sys.argv[1]).set(1)
    metrics.RELEASE.labels("digits-" + sys.argv[1] + "-abc", "digits", sys.argv[1]).set(1)
    metrics.REQUESTS.labels("/predict", "POST", "200").inc(int(sys.argv[2]))
    metrics.LATENCY.labels("/predict", "200").observe(0.01)
    metrics.BATCH.observe(1)
    if len(sys.argv) > 3:
        sys.stdout.write(metrics.render()[0].decode())
    """
)


def worker(directory: Path, version: str, requests: int, render: bool = False) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    env.pop("FUNFLEET_UWSGI_STATS", None)
    argv = [sys.executable, "-c", WORKER, version, str(requests)] + (["render"] if render else [])
    return subprocess.run(argv, env=env, cwd=APP_DIR, capture_output=True, text=True, check=True, timeout=60).stdout


def value(text: str, line_start: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(line.rsplit(" ", 1)[1])


def test_a_replaced_worker_no_longer_reads_ready(tmp_path):
    worker(tmp_path, "1", 5)  # an old worker: served v1, then exited without any exit hook
    text = worker(tmp_path, "2", 3, render=True)  # its successor, on v2
    assert value(text, 'funfleet_model_ready{model="digits",version="1"}') == 0
    assert value(text, 'funfleet_model_ready{model="digits",version="2"}') == 1
    assert value(text, 'funfleet_release_info{model="digits",release="digits-1-abc",version="1"}') == 0
    assert value(text, 'funfleet_release_info{model="digits",release="digits-2-abc",version="2"}') == 1
    # Counters and histograms keep what the gone worker counted, and the live one's own count.
    assert value(text, 'funfleet_http_requests_total{endpoint="/predict",method="POST",status="200"}') == 8
    assert value(text, "funfleet_inference_batch_size_count ") == 2
    assert value(text, 'funfleet_http_request_duration_seconds_count{endpoint="/predict",status="200"}') == 2


def test_gone_workers_fold_into_one_archive_per_type(tmp_path):
    """However many workers come and go, the folder holds the live ones' files and the archives."""
    for i in range(5):
        worker(tmp_path, str(i % 2 + 1), 2)
    text = worker(tmp_path, "3", 1, render=True)
    assert value(text, 'funfleet_http_requests_total{endpoint="/predict",method="POST",status="200"}') == 11
    assert value(text, 'funfleet_model_ready{model="digits",version="1"}') == 0
    assert value(text, 'funfleet_model_ready{model="digits",version="2"}') == 0
    assert value(text, 'funfleet_model_ready{model="digits",version="3"}') == 1
    names = sorted(path.name for path in tmp_path.glob("*.db"))
    # The renderer's own files (it has exited) remain until the next scrape folds them.
    assert [n for n in names if "archive" in n] == [
        "counter_archive.db",
        "gauge_max_archive.db",
        "histogram_archive.db",
    ]
    assert len({name.rsplit("_", 1)[1] for name in names if "archive" not in name}) == 1, names


def test_a_reused_pid_starts_clean(tmp_path):
    from inference import metrics

    worker(tmp_path, "1", 1)
    (stale,) = tmp_path.glob("gauge_max_[0-9]*.db")
    pid = int(stale.stem.rsplit("_", 1)[1])
    assert metrics.retire_workers(tmp_path, {pid}) == [pid]
    assert metrics.retire_workers(tmp_path) == []  # nothing left to retire
    text = worker(tmp_path, "2", 0, render=True)
    assert value(text, 'funfleet_model_ready{model="digits",version="1"}') == 0
    assert value(text, 'funfleet_http_requests_total{endpoint="/predict",method="POST",status="200"}') == 1


def fake_uwsgi_stats(path: Path, stats: dict) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        conn.sendall(json.dumps(stats).encode())
        conn.close()
        server.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_uwsgi_stats_reach_the_metrics(tmp_path):
    """The stats socket's JSON as uWSGI 2.0 writes it (abridged)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from inference.metrics import UwsgiStats, resident_bytes, uwsgi_workers

    gone = 2**22 + 1  # above any pid_max: /proc has nothing for it, so uWSGI's field is used

    stats = {
        "listen_queue": 3,
        "listen_queue_errors": 7,
        "sockets": [{"name": "/run/funfleet/app.sock", "queue": 3, "max_queue": 512}],
        "workers": [
            {"id": 1, "pid": os.getpid(), "status": "busy", "rss": 600_000_000, "requests": 12},
            {"id": 2, "pid": 0, "status": "idle", "rss": 0},  # being respawned: no process
            {"id": 3, "pid": gone, "status": "busy", "rss": 610_000_000},
        ],
    }
    sock = tmp_path / "stats.sock"
    thread = fake_uwsgi_stats(sock, stats)
    registry = CollectorRegistry()
    registry.register(UwsgiStats(str(sock)))
    text = generate_latest(registry).decode()
    thread.join(timeout=5)
    assert value(text, "funfleet_uwsgi_stats_up ") == 1
    assert value(text, "funfleet_uwsgi_listen_queue ") == 3
    assert value(text, "funfleet_uwsgi_listen_queue_size ") == 512
    assert value(text, "funfleet_uwsgi_listen_queue_errors_total ") == 7
    assert value(text, 'funfleet_uwsgi_workers{status="busy"}') == 2
    assert value(text, 'funfleet_uwsgi_workers{status="idle"}') == 1
    # Worker 1 from /proc (this process stands in for it), worker 3 from uWSGI's field.
    mine = value(text, 'funfleet_uwsgi_worker_rss_bytes{worker="1"}')
    assert mine != 600_000_000
    assert abs(mine - resident_bytes()) < 64 * 2**20
    assert value(text, 'funfleet_uwsgi_worker_rss_bytes{worker="3"}') == 610_000_000
    assert 'worker="2"' not in text  # no process, no series
    assert [(w["id"], w["pid"], w["requests"]) for w in uwsgi_workers(stats)] == [(1, os.getpid(), 12), (3, gone, 0)]


def test_no_stats_socket_reads_down(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from inference.metrics import UwsgiStats

    registry = CollectorRegistry()
    registry.register(UwsgiStats(str(tmp_path / "absent.sock")))
    text = generate_latest(registry).decode()
    assert value(text, "funfleet_uwsgi_stats_up ") == 0
    assert "funfleet_uwsgi_listen_queue " not in text


def test_host_state_reports_the_drain_and_the_release_volume(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from inference.metrics import HostState

    drain = tmp_path / "drained"
    registry = CollectorRegistry()
    registry.register(HostState(str(drain), str(tmp_path)))
    text = generate_latest(registry).decode()
    assert value(text, "funfleet_drained ") == 0
    assert value(text, "funfleet_drained_since_timestamp_seconds ") == 0
    assert 0 < value(text, "funfleet_release_volume_avail_bytes ") <= value(text, "funfleet_release_volume_size_bytes ")
    drain.write_text("drained\n")
    os.utime(drain, (1_700_000_000, 1_700_000_000))
    text = generate_latest(registry).decode()
    assert value(text, "funfleet_drained ") == 1
    assert value(text, "funfleet_drained_since_timestamp_seconds ") == 1.7e9


def test_metrics_endpoint_reports_the_host_state(client):
    text = client.get("/metrics").get_data(as_text=True)
    assert "funfleet_release_volume_avail_bytes " in text
    assert "funfleet_drained " not in text  # the tests' app has no drain file set


def test_the_multiprocess_files_are_read_and_written_as_prometheus_client_does(tmp_path):
    """metrics.read_entries and write_entries own the file format prometheus_client keeps private:
    they read what its workers write, and it reads what they write, keys of every padding."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from inference import metrics

    worker(tmp_path, "1", 5)
    (counters,) = tmp_path.glob("counter_[0-9]*.db")
    entries = metrics.read_entries(counters)
    requests = [key for key in entries if '"funfleet_http_requests_total"' in key]
    assert [entries[key][0] for key in requests] == [5.0]

    written = {}
    for n in range(8):  # label values of 8 lengths: every padding of the key
        key = json.dumps(["funfleet_test", "funfleet_test_total", {"n": "x" * n}, "help"], sort_keys=True)
        written[key] = (float(n + 1), 0.0)
    archive = tmp_path / "counter_archive.db"
    metrics.write_entries(archive, written)
    assert metrics.read_entries(archive) == written
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    for n in range(8):
        assert value(text, f'funfleet_test_total{{n="{"x" * n}"}}') == n + 1
    assert value(text, 'funfleet_http_requests_total{endpoint="/predict",method="POST",status="200"}') == 5
    assert not list(tmp_path.glob("*.tmp"))
