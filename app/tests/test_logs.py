"""The app's log lines are JSON, and every line written under a request carries its request id."""

from __future__ import annotations

import io
import logging


def test_access_line_carries_the_request_id(client, samples, log_lines):
    response = client.post(
        "/predict",
        data={"image": (io.BytesIO(samples["4"]), "4.png")},
        headers={"X-Request-Id": "abc123-request"},
    )
    assert response.status_code == 200
    access = [line for line in log_lines() if line["logger"] == "funfleet.access"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == "abc123-request"
    assert (line["method"], line["path"], line["endpoint"], line["status"]) == ("POST", "/predict", "/predict", 200)
    assert line["level"] == "INFO"
    assert line["duration_ms"] > 0


def test_error_lines_carry_the_request_id_too(client, log_lines):
    response = client.post(
        "/predict", data={"image": (io.BytesIO(b"not an image"), "x.png")}, headers={"X-Request-Id": "bad-1"}
    )
    assert response.status_code == 415  # not an image the app can decode
    assert {line["request_id"] for line in log_lines()} == {"bad-1"}
    assert [line["status"] for line in log_lines() if line["logger"] == "funfleet.access"] == [415]


def test_no_request_id_outside_a_request(log_lines):
    logging.getLogger("funfleet.test").warning("plain %s", "line", extra={"model": "digits"})
    (line,) = log_lines()
    assert line == {**line, "level": "WARNING", "logger": "funfleet.test", "message": "plain line", "model": "digits"}
    assert "request_id" not in line


def test_exceptions_are_one_json_line(log_lines):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("funfleet.test").exception("failed")
    (line,) = log_lines()
    assert line["message"] == "failed"
    assert "ValueError: boom" in line["exception"]
