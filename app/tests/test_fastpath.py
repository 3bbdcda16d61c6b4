"""POST /predict's fast path (fastpath.py): the common request never reaches Flask and gets the
bytes Flask would have sent; every other request, and every one that fails a check, is Flask's,
body included; an error while the model runs is answered by Flask's handlers."""

from __future__ import annotations

import io

import pytest
from flask import Flask
from PIL import Image

from helpers import counter, encode, flask_requests
from inference import create_app, fastpath
from inference.batching import IN_FLIGHT, BatchTimeout
from inference.config import Settings


@pytest.fixture(scope="module")
def flask_app(models_dir) -> Flask:
    """The same models with the fast path off: every request is Flask's."""
    return create_app({"model_dir": str(models_dir), "fast_predict": False})


def form(image: bytes, filename: str = "x.png", **fields: str) -> dict:
    return {"image": (io.BytesIO(image), filename), **fields}


def send(app: Flask, case: dict):
    client = app.test_client()
    kwargs = dict(case)
    data = kwargs.pop("data")
    if isinstance(data, dict):  # fresh uploads each time: the test client consumes the streams
        data = {k: fresh(v) for k, v in data.items()}
    return client.post(kwargs.pop("path", "/predict"), data=data, **kwargs)


def fresh(value):
    if isinstance(value, list):
        return [fresh(v) for v in value]
    if isinstance(value, tuple):
        return (io.BytesIO(value[0].getvalue()), value[1])
    return value


def same_answer(fast, slow) -> None:
    assert fast.status_code == slow.status_code
    assert fast.data == slow.data
    assert sorted(fast.headers.items()) == sorted(slow.headers.items())


def served_cases(samples: dict[str, bytes]) -> dict[str, dict]:
    png, jpeg = samples["7"], encode(Image.open(io.BytesIO(samples["3"])).convert("RGB"), "JPEG")
    return {
        "multipart": {"data": form(png)},
        "raw png": {"data": png, "content_type": "image/png"},
        "octet-stream": {"data": png, "content_type": "application/octet-stream"},
        "jpeg": {"data": form(jpeg, "x.jpg")},
        "top_k": {"data": form(png), "query_string": "top_k=3"},
        "model and version": {"data": form(png), "query_string": "model=digits&version=1"},
        "version label": {"data": form(png), "query_string": "model=digits&label=stable"},
        "version label as a form field": {"data": form(png, model="digits", label="stable")},
        "empty model is the default": {"data": form(png), "query_string": "model="},
        "model as a form field": {"data": form(png, model="digits", version="1")},
        "query wins over the form": {"data": form(png, model="iris"), "query_string": "model=digits"},
        "request id": {"data": form(png), "headers": {"X-Request-Id": "fast-1"}},
    }


def flask_cases(samples: dict[str, bytes]) -> dict[str, tuple[dict, int]]:
    """Requests the fast path hands to Flask, and Flask's status for each."""
    png = samples["7"]
    return {
        "top_k 0": ({"data": form(png), "query_string": "top_k=0"}, 400),
        "top_k 11": ({"data": form(png), "query_string": "top_k=11"}, 400),
        "top_k word": ({"data": form(png), "query_string": "top_k=abc"}, 400),
        "top_k twice": ({"data": form(png), "query_string": "top_k=2&top_k=3"}, 200),
        "top_k escaped": ({"data": form(png), "query_string": "top_k=%33"}, 200),
        "format query (segmentation's)": ({"data": form(png), "query_string": "format=png"}, 200),
        "unknown model": ({"data": form(png), "query_string": "model=nope"}, 404),
        "unknown version": ({"data": form(png), "query_string": "model=digits&version=9"}, 404),
        "unknown label": ({"data": form(png), "query_string": "model=digits&label=canary"}, 404),
        "version and label": ({"data": form(png), "query_string": "version=1&label=stable"}, 400),
        "tabular model": ({"data": form(png), "query_string": "model=iris"}, 415),
        "not an image": ({"data": form(b"not an image")}, 415),
        "empty body": ({"data": b"", "content_type": "image/png"}, 415),
        "no image field": ({"data": {"other": (io.BytesIO(png), "x.png")}}, 400),
        "two images": ({"data": {"image": [(io.BytesIO(png), "a.png"), (io.BytesIO(png), "b.png")]}}, 400),
        "text body": ({"data": png, "content_type": "text/plain"}, 415),
        "json": ({"data": b"{}", "content_type": "application/json"}, 415),
        "cors": ({"data": form(png), "headers": {"Origin": "https://example.org"}}, 200),
        "trailing slash": ({"data": form(png), "path": "/predict/"}, 404),
    }


def test_common_requests_never_reach_flask_and_get_flasks_bytes(multi_app, flask_app, samples):
    assert isinstance(multi_app.wsgi_app.app, fastpath.FastPredict)  # inside the bookkeeping
    for name, case in served_cases(samples).items():
        with flask_requests(multi_app) as seen:
            fast = send(multi_app, case)
        assert seen == [], name
        assert fast.status_code == 200, name
        same_answer(fast, send(flask_app, case))
    assert send(multi_app, served_cases(samples)["multipart"]).json["best_prediction"] == "7"


def test_everything_else_is_flasks_with_its_body(multi_app, flask_app, samples):
    for name, (case, status) in flask_cases(samples).items():
        with flask_requests(multi_app) as seen:
            fast = send(multi_app, case)
        assert seen == ["request"], name
        assert fast.status_code == status, (name, fast.json)
        same_answer(fast, send(flask_app, case))
        if status == 200:
            assert fast.json["best_prediction"] == "7", name


def test_a_body_over_the_limit_is_flasks_413(app, samples):
    with flask_requests(app) as seen:
        response = app.test_client().post("/predict", data=b"x" * (2 * 1024 * 1024 + 1), content_type="image/png")
    assert (seen, response.status_code, response.json["code"]) == (["request"], 413, "request_entity_too_large")


def test_the_fast_path_counts_and_times_its_requests(multi_app, samples):
    def scrape() -> tuple[float, float]:
        text = multi_app.test_client().get("/metrics").text
        labels = {"endpoint": "/predict", "status": "200"}
        return (
            counter(text, "funfleet_http_requests_total", method="POST", **labels),
            counter(text, "funfleet_http_request_duration_seconds_count", **labels),
        )

    before = scrape()
    for _ in range(3):
        assert send(multi_app, {"data": form(samples["4"])}).status_code == 200
    assert scrape() == (before[0] + 3, before[1] + 3)


@pytest.mark.parametrize(
    "case",
    [(BatchTimeout("no batch-mate answered"), 503, "inference_timeout"), (RuntimeError("boom"), 500, "internal_error")],
)
def test_an_error_in_the_model_is_answered_by_flasks_handlers_once(multi_app, samples, monkeypatch, case):
    error, status, code = case
    model = multi_app.extensions["funfleet.runtime"].get("digits")
    calls: list[int] = []

    def failing(batch):
        calls.append(len(batch))
        raise error

    monkeypatch.setattr(model, "_call", failing)
    in_flight = IN_FLIGHT()
    with flask_requests(multi_app) as seen:
        response = send(multi_app, {"data": form(samples["4"])})
    assert (response.status_code, response.json["code"], calls) == (status, code, [1])
    assert seen == []  # the handlers ran in a request context the fast path pushed, not a new request
    assert (response.headers.get("Retry-After") == "1") is isinstance(error, BatchTimeout)
    assert IN_FLIGHT() == in_flight


def test_a_batching_worker_counts_fast_requests_in_flight_and_lets_them_go(models_dir, samples, monkeypatch):
    app = create_app({"model_dir": str(models_dir), "batching": True, "batch_timeout_micros": 1000})
    seen_in_flight: list[int] = []
    model = app.extensions["funfleet.runtime"].get("digits")
    predict = model.predict
    monkeypatch.setattr(model, "predict", lambda batch: seen_in_flight.append(IN_FLIGHT()) or predict(batch))
    before = IN_FLIGHT()
    assert send(app, {"data": form(samples["2"])}).json["best_prediction"] == "2"
    assert send(app, {"data": form(samples["2"]), "query_string": "top_k=0"}).status_code == 400
    assert seen_in_flight == [before + 1]
    assert IN_FLIGHT() == before


def test_the_setting_turns_it_off(flask_app):
    assert Settings.from_env(environ={"FUNFLEET_FAST_PREDICT": "0"}).fast_predict is False
    assert Settings.from_env(environ={}).fast_predict is True
    assert not isinstance(flask_app.wsgi_app.app, fastpath.FastPredict)
