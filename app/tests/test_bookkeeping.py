"""One bookkeeping for every request (bookkeeping.py): a request the fast path serves and one
Flask serves each get their timing, metrics, access line, request id and in-flight count from
the one layer around the app, and from nowhere else; the fast path itself records nothing."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder

from helpers import SAMPLES, counter, flask_requests
from inference import bookkeeping, create_app, fastpath, logs, metrics
from inference.batching import IN_FLIGHT
from inference.bookkeeping import SCOPE, Bookkeeping, RequestScope
from inference.config import Settings


@pytest.fixture(scope="module")
def batching_app(models_dir) -> Flask:
    """Fast path on, and batching on: the worker counts its requests in flight."""
    return create_app({"model_dir": str(models_dir), "batching": True, "batch_timeout_micros": 1000})


@pytest.fixture
def recorders(monkeypatch):
    """Every request the bookkeeping recorded (its endpoint and status), and every metric
    observation and access line, each with the module that made the call."""
    calls: list[tuple[str, str, tuple]] = []

    def spy(owner, name, what=lambda *args: args):
        real = getattr(owner, name)

        def recorded(*args, **kwargs):
            calls.append((name, sys._getframe(1).f_globals["__name__"], what(*args)))
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)

    spy(Bookkeeping, "record", lambda _self, _environ, scope: (scope.endpoint, scope.status))
    spy(metrics, "observe_request")
    spy(logs, "access")
    return calls


@pytest.fixture
def in_flight_at_the_model(batching_app, monkeypatch) -> list[int]:
    """The worker's in-flight count each time the digits model runs."""
    model = batching_app.extensions["funfleet.runtime"].get("digits")
    predict = model.predict
    seen: list[int] = []
    monkeypatch.setattr(model, "predict", lambda batch: seen.append(IN_FLIGHT()) or predict(batch))
    return seen


def scrape(app: Flask, endpoint: str, status: int) -> tuple[float, float]:
    text = app.test_client().get("/metrics").text
    labels = {"endpoint": endpoint, "status": str(status)}
    return (
        counter(text, "funfleet_http_requests_total", method="POST", **labels),
        counter(text, "funfleet_http_request_duration_seconds_count", **labels),
    )


def upload(png: bytes) -> dict:
    return {"image": (io.BytesIO(png), "x.png")}


SEVEN = (SAMPLES / "7.png").read_bytes()
# (path, query, headers, which path serves it, status, endpoint label)
CASES = {
    "fast": ("/predict", "", {}, "fast", 200, "/predict"),
    "Flask (CORS)": ("/predict", "", {"Origin": "https://ui.example"}, "flask", 200, "/predict"),
    "Flask (escaped query)": ("/predict", "top_k=%33", {}, "flask", 200, "/predict"),
    "Flask (its 400)": ("/predict", "top_k=0", {}, "flask", 400, "/predict"),
    "Flask (no route)": ("/predict/", "", {}, "flask", 404, "unmatched"),
}


def test_the_bookkeeping_wraps_the_whole_app_fast_path_included(batching_app, models_dir):
    assert isinstance(batching_app.wsgi_app, Bookkeeping)
    assert isinstance(batching_app.wsgi_app.app, fastpath.FastPredict)
    slow = create_app({"model_dir": str(models_dir), "fast_predict": False, "model_load": "none"})
    assert isinstance(slow.wsgi_app, Bookkeeping)
    assert not isinstance(slow.wsgi_app.app, fastpath.FastPredict)


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_paths_go_through_the_one_bookkeeping(batching_app, log_lines, recorders, in_flight_at_the_model, case):
    path, query, headers, served_by, status, endpoint = CASES[case]
    before, idle = scrape(batching_app, endpoint, status), IN_FLIGHT()
    del recorders[:]  # the scrape's own
    mark = len(log_lines())
    rid = f"rid-{case.split()[0].lower()}"

    with flask_requests(batching_app) as seen:
        response = batching_app.test_client().post(
            path, query_string=query, data=upload(SEVEN), headers={**headers, "X-Request-Id": rid}
        )

    assert response.status_code == status, response.json
    assert seen == ([] if served_by == "fast" else ["request"])  # the path the case meant
    assert [(name, module) for name, module, _ in recorders] == [
        ("record", "inference.bookkeeping"),
        ("observe_request", "inference.bookkeeping"),
        ("access", "inference.bookkeeping"),
    ]
    assert recorders[0][2] == (endpoint, status)
    (access,) = [line for line in log_lines()[mark:] if line["logger"] == "funfleet.access"]
    assert (access["method"], access["path"], access["endpoint"], access["status"]) == ("POST", path, endpoint, status)
    assert access["request_id"] == rid
    assert access["duration_ms"] > 0
    after = scrape(batching_app, endpoint, status)
    assert after == (before[0] + 1, before[1] + 1)
    if status == 200:
        assert in_flight_at_the_model == [idle + 1]
    assert IN_FLIGHT() == idle


def test_the_fast_path_itself_records_nothing(multi_app, samples, log_lines, recorders):
    """Called without the layer around it (a scope of its own), the fast path answers and
    leaves no metric, no access line: it could only count a request twice."""
    builder = EnvironBuilder(path="/predict", method="POST", data=upload(samples["7"]))
    environ = builder.get_environ()
    scope = RequestScope(environ, lambda status, headers, exc_info=None: None)
    environ[SCOPE] = scope
    body = b"".join(multi_app.wsgi_app.app(environ, scope.start_response))
    assert (scope.status, json.loads(body)["best_prediction"], scope.endpoint) == (200, "7", "/predict")
    assert recorders == []
    assert [line for line in log_lines() if line["logger"] == "funfleet.access"] == []


def test_lines_logged_while_the_fast_path_serves_carry_the_request_id(multi_app, samples, log_lines, monkeypatch):
    model = multi_app.extensions["funfleet.runtime"].get("digits")
    predict = model.predict

    def noisy(batch):
        logging.getLogger("funfleet.test").warning("in the model call")
        return predict(batch)

    monkeypatch.setattr(model, "predict", noisy)
    with flask_requests(multi_app) as seen:
        response = multi_app.test_client().post("/predict", data=upload(samples["7"]), headers={"X-Request-Id": "f-9"})
    assert (response.status_code, seen) == (200, [])
    assert [(line["logger"], line.get("request_id")) for line in log_lines()] == [
        ("funfleet.test", "f-9"),
        ("funfleet.access", "f-9"),
    ]
    assert logs.request_id() is None  # and none once the request is done


@pytest.mark.parametrize(
    ("query", "content_type", "status"),
    [("model=nope", "image/png", 404), ("", "text/plain", 415), ("top_k=0", "image/png", 400)],
)
def test_a_predict_body_the_answer_did_not_need_is_read_to_its_end(multi_app, query, content_type, status):
    body = io.BytesIO(b"\0" * (1 << 20))
    headers = {"Content-Type": content_type, "Content-Length": str(1 << 20)}
    response = multi_app.test_client().post("/predict", query_string=query, input_stream=body, headers=headers)
    assert response.status_code == status
    assert body.tell() == 1 << 20


def test_a_body_declared_over_the_limit_is_refused_unread(app):
    body = io.BytesIO(b"\0" * (2 * 1024 * 1024 + 1))
    headers = {"Content-Type": "image/png", "Content-Length": str(2 * 1024 * 1024 + 1)}
    response = app.test_client().post("/predict", input_stream=body, headers=headers)
    assert (response.status_code, body.tell()) == (413, 0)


def test_an_app_that_raises_is_counted_as_the_500_the_server_answers(log_lines, monkeypatch):
    def broken(environ, start_response):
        raise RuntimeError("boom")

    layer = Bookkeeping(broken, Settings(batching=True))
    idle = IN_FLIGHT()
    environ = EnvironBuilder(path="/x", method="GET", headers={"X-Request-Id": "r-500"}).get_environ()
    with pytest.raises(RuntimeError):
        layer(environ, lambda *args: None)
    (access,) = [line for line in log_lines() if line["logger"] == "funfleet.access"]
    assert (access["status"], access["endpoint"], access["request_id"]) == (500, bookkeeping.UNMATCHED, "r-500")
    assert IN_FLIGHT() == idle
    assert logs.request_id() is None


def test_a_failure_to_record_costs_the_metric_not_the_answer(batching_app, monkeypatch, caplog):
    """The answer is made before the bookkeeping records it: a metrics file that cannot be written
    is logged, and the client still gets its prediction."""

    def broken(*_args, **_kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(metrics, "observe_request", broken)
    image = (SAMPLES / "7.png").read_bytes()
    with caplog.at_level(logging.ERROR):
        response = batching_app.test_client().post("/predict", data=image, content_type="image/png")
    assert response.status_code == 200
    assert response.get_json()["best_prediction"] == "7"
    assert "could not record" in caplog.text
    assert IN_FLIGHT() == 0
