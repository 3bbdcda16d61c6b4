"""A real uWSGI (master, lazy-apps, 2 processes): no fork hang, both workers serve, metrics add up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import counter


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
