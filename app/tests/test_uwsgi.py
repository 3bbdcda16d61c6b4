"""A real uWSGI (master, lazy-apps, 2 processes): no fork hang, both workers serve, metrics add up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from helpers import counter


def test_concurrent_requests_through_two_lazy_workers(uwsgi_server, samples):
    def one(i: int) -> tuple[int, str, int]:
        label = str(i % 10)
        r = requests.post(f"{uwsgi_server}/predict", files={"image": (f"{label}.png", samples[label])}, timeout=20)
        pid = requests.get(f"{uwsgi_server}/metadata", timeout=20).json()["service"]["pid"]
        return r.status_code, r.json()["best_prediction"] == label, pid

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(80)))
    assert [status for status, _, _ in results] == [200] * 80
    assert all(ok for _, ok, _ in results)
    assert len({pid for _, _, pid in results}) == 2


def test_metrics_sum_over_workers(uwsgi_server, samples):
    before = requests.get(f"{uwsgi_server}/metrics", timeout=10).text
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(
            pool.map(
                lambda _: (
                    requests.post(
                        f"{uwsgi_server}/predict", files={"image": ("3.png", samples["3"])}, timeout=20
                    ).status_code
                ),
                range(40),
            )
        )
    assert statuses == [200] * 40
    after = requests.get(f"{uwsgi_server}/metrics", timeout=10).text
    labels = dict(endpoint="/predict", method="POST", status="200")
    assert (
        counter(after, "funfleet_http_requests_total", **labels)
        - counter(before, "funfleet_http_requests_total", **labels)
        == 40
    )
    assert counter(after, "funfleet_model_ready", model="digits", version="1") == 1.0


def test_every_workers_memory_in_metrics_and_metadata(uwsgi_server):
    """Read from /proc at scrape time, so a worker that has not served anything yet is there too
    (uWSGI's own stats field stays 0 until a worker's first request ends)."""
    meta = requests.get(f"{uwsgi_server}/metadata", timeout=10).json()
    workers = meta["runtime"]["workers"]
    assert [w["id"] for w in workers] == [1, 2]
    assert meta["service"]["pid"] in {w["pid"] for w in workers}
    assert len({w["pid"] for w in workers}) == 2
    for worker in workers:
        assert worker["resident_bytes"] > 50 * 2**20  # TensorFlow and the models: hundreds of MiB
        assert worker["status"] in {"idle", "busy"}
    text = requests.get(f"{uwsgi_server}/metrics", timeout=10).text
    rss = {w: counter(text, "funfleet_uwsgi_worker_rss_bytes", worker=w) for w in ("1", "2")}
    assert all(value > 50 * 2**20 for value in rss.values()), rss
    assert counter(text, "funfleet_uwsgi_stats_up") == 1
