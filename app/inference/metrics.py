"""Prometheus metrics that stay correct under several uWSGI workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the uWSGI unit sets it to a directory under its
RuntimeDirectory, emptied when the service stops), each worker writes its own files and ``/metrics``
sums them with the multiprocess collector. Without it, the process registry is used.

Workers die without running exit hooks (uWSGI's ``skip-atexit``), so nothing tells the files a
worker is gone: at every scrape, the files of workers that no longer exist are folded into one
archive per type (``retire_workers``): counters keep their totals, and readiness and release
gauges keep their series at 0. So after a chain reload, a respawn or a restart (the unit keeps
the folder across restarts), readiness of the release the old workers served reads 0, not 1,
and the folder does not grow with every worker that ever ran. A new worker whose pid was used
before retires that pid's gauges before it sets any. ``/metrics`` also reports uWSGI's listen
queue and busy workers from its stats socket (``FUNFLEET_UWSGI_STATS``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("funfleet_http_requests", "HTTP requests handled", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "funfleet_http_request_duration_seconds",
    "Time spent handling a request",
    ["endpoint", "status"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE = Histogram(
    "funfleet_inference_duration_seconds", "Time spent in the compiled model call", buckets=LATENCY_BUCKETS
)
BATCH = Histogram("funfleet_inference_batch_size", "Instances per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
BATCH_PADDED = Histogram(
    "funfleet_inference_batch_padded_size",
    "Rows per model call after padding to a warmed-up size (micro-batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_WAIT = Histogram(
    "funfleet_inference_batch_wait_seconds",
    "Time a request waited in its model's batch queue",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
INSTANCES = Counter("funfleet_predictions", "Instances predicted", ["model", "version"])
# What a classifier answers, per model version: the top-1 class of every instance. A canary's
# answers can then be compared with the baseline's (a model with its labels in the wrong order
# answers 200, fast, and wrong). Classes come from the release's labels.json, never from a
# request; past CLASS_SERIES classes the rest count as "other", so a model with thousands of
# classes adds a bounded number of series.
PREDICTED_CLASSES = Counter(
    "funfleet_prediction_classes", "Instances predicted, by their top-1 class", ["model", "version", "class"]
)
CLASS_SERIES = 64
OTHER_CLASS = "other"

# What a regression model answers, per model version: each instance's first output, counted in
# the bucket of the model's declared output_buckets it falls in (not cumulative, unlike a
# histogram's le: each instance counts once). A bucket is named by its upper bound ("+Inf" above
# the last); a value that is not a number counts as "NaN", which a broken release answers.
PREDICTED_OUTPUTS = Counter(
    "funfleet_prediction_outputs",
    "Instances predicted, by the bucket of their first output's value",
    ["model", "version", "bucket"],
)
MODEL_READY = Gauge(
    "funfleet_model_ready",
    "1 while a live worker has this model version loaded and warm; 0 once none has",
    ["model", "version"],
    multiprocess_mode="max",
)
MODEL_MEMORY = Gauge(
    "funfleet_model_memory_bytes",
    "Resident memory a live worker gained loading and warming this model version",
    ["model", "version"],
    multiprocess_mode="livemax",
)
RELEASE = Gauge(
    "funfleet_release_info",
    "1 for the release a live worker serves (its release id); 0 once none does",
    ["release", "model", "version"],
    multiprocess_mode="max",
)

# One file per worker pid and metric type (gauges: and mode), as prometheus_client writes them.
_WORKER_FILE = re.compile(r"^(?P<type>counter|histogram|summary|gauge)_(?:(?P<mode>[a-z]+)_)?(?P<pid>\d+)\.db$")
ARCHIVE = "archive"  # the pid part of the files that hold what gone workers left


# Label values come from closed sets, so no client can grow the series (or the multiprocess
# files every scrape reads): the endpoint is the matched route rule ("unmatched" for any other
# path), the method one of these or "other", the status an HTTP status code.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def observe_request(endpoint: str, method: str, status: int, seconds: float | None) -> None:
    """A handled request: its count and, when its start is known, its duration."""
    REQUESTS.labels(endpoint, method_label(method), str(status)).inc()
    if seconds is not None:
        LATENCY.labels(endpoint, str(status)).observe(seconds)


# (model, version, class) -> its series: labels() checks and converts its values on every call,
# which costs as much as the increment itself on the request path. Bounded as the series are.
_CLASS_SERIES_CACHE: dict[tuple[str, str, str], object] = {}


def observe_classes(model: str, version: str, labels: tuple[str, ...], top: list[int]) -> None:
    """Count each instance's top-1 class (its index in ``labels``) for the model version."""
    for index in top:
        key = (model, version, _class_label(labels, index))
        series = _CLASS_SERIES_CACHE.get(key)
        if series is None:
            series = _CLASS_SERIES_CACHE[key] = PREDICTED_CLASSES.labels(*key)
        series.inc()  # type: ignore[attr-defined]


def bucket_names(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """Each bucket's label: its upper bound as Prometheus writes a float, then +Inf and NaN."""
    return (*(floatToGoString(b) for b in bounds), "+Inf", "NaN")


_OUTPUT_SERIES_CACHE: dict[tuple[str, str, tuple[float, ...]], list] = {}


def observe_outputs(model: str, version: str, bounds: tuple[float, ...], values: np.ndarray) -> None:
    """Count each instance's first output value in its bucket, for the model version."""
    key = (model, version, bounds)
    series = _OUTPUT_SERIES_CACHE.get(key)
    if series is None:
        series = _OUTPUT_SERIES_CACHE[key] = [PREDICTED_OUTPUTS.labels(model, version, n) for n in bucket_names(bounds)]
    index = np.searchsorted(np.asarray(bounds), values, side="left")  # value <= bound: (previous, bound]
    index[np.isnan(values)] = len(bounds) + 1
    for i, count in zip(*np.unique(index, return_counts=True), strict=True):
        series[int(i)].inc(int(count))


def _class_label(labels: tuple[str, ...], index: int) -> str:
    return labels[index] if 0 <= index < min(len(labels), CLASS_SERIES) else OTHER_CLASS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# prometheus_client's multiprocess files, read and written here (its reader and writer are
# private): a native int, the bytes used; 4 bytes of padding; then one entry a series: a native
# int, the key's length; the key (UTF-8 JSON) padded with spaces to 8-byte alignment (4 to 8
# spaces counting the length); two doubles, the value and a timestamp.
_INT = struct.Struct("i")
_TWO_DOUBLES = struct.Struct("dd")
_HEADER = 8


def read_entries(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Each series' key and its value and timestamp, in file order."""
    data = Path(path).read_bytes()
    used = _INT.unpack_from(data, 0)[0] if len(data) >= _HEADER else 0
    if not _HEADER <= used <= len(data):
        return {}  # never written (a worker that died before its first value)
    entries: dict[str, tuple[float, float]] = {}
    pos = _HEADER
    while pos < used:
        length = _INT.unpack_from(data, pos)[0]
        end = pos + 4 + length + (8 - (length + 4) % 8) + _TWO_DOUBLES.size
        if length < 0 or end > used:
            raise ValueError(f"{path}: an entry runs past the {used} bytes used at offset {pos}")
        key = data[pos + 4 : pos + 4 + length].decode()
        entries[key] = _TWO_DOUBLES.unpack_from(data, end - _TWO_DOUBLES.size)
        pos = end
    return entries


def write_entries(path: str | os.PathLike, entries: dict[str, tuple[float, float]]) -> None:
    """The file prometheus_client reads for these series, replaced whole (never read half written)."""
    chunks = []
    for key, (value, timestamp) in entries.items():
        encoded = key.encode()
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        chunks.append(_INT.pack(len(encoded)) + padded + _TWO_DOUBLES.pack(value, timestamp))
    body = b"".join(chunks)
    temporary = Path(f"{os.fspath(path)}.tmp")  # not *.db: no reader globs it
    temporary.write_bytes(_INT.pack(_HEADER + len(body)) + bytes(4) + body)
    os.replace(temporary, path)


def _fold(path: Path, archive: Path, zero: bool) -> None:
    """Add one worker's values into the archive file of its type (gauges: as 0), then remove it."""
    totals = read_entries(archive) if archive.exists() else {}
    for key, (value, timestamp) in read_entries(path).items():
        current = totals.get(key, (0.0, 0.0))[0]
        totals[key] = (0.0 if zero else current + value, timestamp)
    write_entries(archive, totals)
    path.unlink()


def retire_workers(directory: str | os.PathLike, pids: set[int] | None = None, gauges_only: bool = False) -> list[int]:
    """Fold the files of the given pids, or of every pid that no longer runs, into one archive
    file per type: counters and histograms keep their totals, `max` gauges (readiness, release)
    keep their series at 0, live-mode gauges are dropped (as prometheus_client's
    mark_process_dead does). The folder so holds the live workers' files and a few archives,
    however many workers came and went. Returns the pids retired."""
    directory = Path(directory)
    retired = set()
    for path in sorted(directory.glob("*.db")):
        match = _WORKER_FILE.match(path.name)
        if match is None:
            continue
        pid = int(match["pid"])
        if pids is not None:
            if pid not in pids:
                continue
        elif pid == os.getpid() or _alive(pid):
            continue
        kind, mode = match["type"], match["mode"]
        if gauges_only and kind != "gauge":
            continue
        if kind == "gauge" and mode.startswith("live"):
            path.unlink(missing_ok=True)
        elif kind == "gauge" and mode != "max":
            continue  # no such gauge here; left as prometheus_client reads it
        else:
            name = f"gauge_max_{ARCHIVE}.db" if kind == "gauge" else f"{kind}_{ARCHIVE}.db"
            _fold(path, directory / name, zero=kind == "gauge")
        retired.add(pid)
    return sorted(retired)


@contextmanager
def _exclusive(directory: str) -> Iterator[None]:
    """One worker at a time folds and reads the folder (two scrapes at once must not both fold
    a file, or read one the other just removed)."""
    with open(os.path.join(directory, ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start_worker() -> None:
    """Call once in a new worker before it sets any gauge: gauges left under its pid by an
    earlier worker (pids are reused) are retired first, so a stale "ready" cannot show through.
    Only gauges: this process already holds its own counter and histogram files open (the
    unlabelled histograms create theirs at import), and an earlier owner's counts in them are
    totals that must stay anyway."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        with _exclusive(directory):
            retire_workers(directory, {os.getpid()}, gauges_only=True)


def read_uwsgi_stats(path: str) -> dict | None:
    """The JSON uWSGI's stats socket answers, or None when it does not."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None


def resident_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (Linux), 0 where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def uwsgi_workers(stats: dict) -> list[dict]:
    """Each running worker: id, pid, status, requests and resident memory now. The memory is read
    from /proc at call time (the workers run as one user); uWSGI's own `rss` field is only
    updated when that worker finishes a request, and is the fallback."""
    workers = []
    for worker in stats.get("workers", []):
        pid = int(worker.get("pid") or 0)
        if pid <= 0:
            continue  # a worker slot with no process (being respawned)
        workers.append(
            {
                "id": int(worker.get("id", 0)),
                "pid": pid,
                "status": str(worker.get("status", "unknown")),
                "requests": int(worker.get("requests", 0)),
                "resident_bytes": resident_bytes(pid) or int(worker.get("rss") or 0),
            }
        )
    return workers


class UwsgiStats(Collector):
    """uWSGI's listen queue and workers, read from its stats socket at scrape time."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterator:
        stats = read_uwsgi_stats(self.path)
        up = GaugeMetricFamily("funfleet_uwsgi_stats_up", "1 when uWSGI's stats socket answered this scrape")
        up.add_metric([], 0 if stats is None else 1)
        yield up
        if stats is None:
            return
        sockets = stats.get("sockets") or [{}]
        queue = GaugeMetricFamily("funfleet_uwsgi_listen_queue", "Connections waiting in uWSGI's listen queue")
        queue.add_metric([], sum(s.get("queue", 0) for s in sockets))
        yield queue
        size = GaugeMetricFamily("funfleet_uwsgi_listen_queue_size", "Size of uWSGI's listen queue")
        size.add_metric([], max(s.get("max_queue", 0) for s in sockets))
        yield size
        overflows = CounterMetricFamily(
            "funfleet_uwsgi_listen_queue_errors", "Times uWSGI's listen queue was full (since uWSGI started)"
        )
        overflows.add_metric([], stats.get("listen_queue_errors", 0))
        yield overflows
        workers = GaugeMetricFamily("funfleet_uwsgi_workers", "uWSGI workers by status", labels=["status"])
        counts: dict[str, int] = {}
        for worker in stats.get("workers", []):
            status = "busy" if worker.get("status") == "busy" else str(worker.get("status", "unknown"))
            counts[status] = counts.get(status, 0) + 1
        for status in ("idle", "busy"):
            counts.setdefault(status, 0)
        for status, count in sorted(counts.items()):
            workers.add_metric([status], count)
        yield workers
        rss = GaugeMetricFamily(
            "funfleet_uwsgi_worker_rss_bytes",
            "Resident memory of each running uWSGI worker, read at scrape time",
            labels=["worker"],
        )
        for worker in uwsgi_workers(stats):
            if worker["resident_bytes"]:
                rss.add_metric([str(worker["id"])], worker["resident_bytes"])
        yield rss


class HostState(Collector):
    """What the fleet needs to know about this host at scrape time: whether it is drained (out of
    rotation; since when), and the space left on the volume that holds its releases."""

    def __init__(self, drain_file: str, release_dir: str) -> None:
        self.drain_file, self.release_dir = drain_file, release_dir

    def collect(self) -> Iterator:
        if self.drain_file:
            try:
                since = os.stat(self.drain_file).st_mtime
            except OSError:
                since = None
            drained = GaugeMetricFamily("funfleet_drained", "1 while this host is drained (out of rotation)")
            drained.add_metric([], 0 if since is None else 1)
            yield drained
            started = GaugeMetricFamily(
                "funfleet_drained_since_timestamp_seconds", "When this host was drained (Unix time; 0 when it is not)"
            )
            started.add_metric([], since or 0)
            yield started
        try:
            volume = os.statvfs(self.release_dir)
        except OSError:
            return
        avail = GaugeMetricFamily("funfleet_release_volume_avail_bytes", "Free space on the releases' volume")
        avail.add_metric([], volume.f_bavail * volume.f_frsize)
        yield avail
        size = GaugeMetricFamily("funfleet_release_volume_size_bytes", "Size of the releases' volume")
        size.add_metric([], volume.f_blocks * volume.f_frsize)
        yield size


def render(host: HostState | None = None) -> tuple[bytes, str]:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        with _exclusive(directory):
            retire_workers(directory)
            payload = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        payload = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    stats = os.environ.get("FUNFLEET_UWSGI_STATS")
    if stats:
        extra.register(UwsgiStats(stats))
    if host is not None:
        extra.register(host)
    return payload + generate_latest(extra), CONTENT_TYPE_LATEST
