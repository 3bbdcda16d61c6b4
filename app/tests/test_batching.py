"""Adaptive micro-batching: the batcher's queue on a plain numpy function, then the real models
under a real uWSGI with threads, where concurrent requests share model calls.

Every test bounds its threads and waits; none asserts a duration."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from helpers import counter, serve_uwsgi
from inference.batching import Batcher, BatchTimeout, padded_sizes


class Recorder:
    """A model stand-in that is a real function: row sums, recording each call's batch shape."""

    def __init__(self, gate: threading.Event | None = None, fail_on: float | None = None) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.gate, self.fail_on = gate, fail_on

    def __call__(self, rows: np.ndarray) -> list[np.ndarray]:
        self.shapes.append(rows.shape)
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_on is not None and (rows == self.fail_on).any():
            raise ValueError("the model failed on this batch")
        return [rows.sum(axis=1, keepdims=True), rows * 2]


def together(fn, args: list) -> list:
    """Run fn on every argument at once (threads released by a barrier), results in order."""
    barrier = threading.Barrier(len(args))

    def run(arg):
        barrier.wait(10)
        try:
            return fn(arg)
        except Exception as exc:  # returned, not raised: each request's own outcome
            return exc

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(run, args))


def test_padded_sizes():
    assert padded_sizes(16) == (1, 2, 4, 8, 16)
    assert padded_sizes(12) == (1, 2, 4, 8, 12)
    assert padded_sizes(1) == (1,)


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows():
    model = Recorder()
    batcher = Batcher(model, max_batch_size=16, timeout_s=0.5, sizes=padded_sizes(16))
    rows = [np.full((1, 3), float(i), np.float32) for i in range(12)]
    results = together(batcher, rows)
    for i, (sums, doubled) in enumerate(results):
        assert sums.tolist() == [[3.0 * i]]
        assert doubled.tolist() == [[2.0 * i] * 3]
    assert len(model.shapes) < 12  # batched: fewer model calls than requests
    assert sum(s[0] for s in model.shapes) >= 12
    assert {s[0] for s in model.shapes} <= {1, 2, 4, 8, 16}  # padded to the warmed-up sizes


def test_requests_of_several_rows_keep_their_rows_together():
    model = Recorder()
    batcher = Batcher(model, max_batch_size=8, timeout_s=0.5, sizes=padded_sizes(8))
    rows = [np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 100 * n for n in (1, 2, 3, 1, 2)]
    for arg, (sums, _) in zip(rows, together(batcher, rows), strict=True):
        assert sums[:, 0].tolist() == arg.sum(axis=1).tolist()


def test_a_lone_request_runs_when_its_wait_is_up():
    model = Recorder()
    batcher = Batcher(model, max_batch_size=16, timeout_s=0.01, sizes=padded_sizes(16))
    sums, _ = batcher(np.ones((1, 4), np.float32))
    assert sums.tolist() == [[4.0]]
    assert model.shapes == [(1, 4)]


def test_a_request_as_large_as_a_batch_runs_alone():
    model = Recorder()
    batcher = Batcher(model, max_batch_size=4, timeout_s=10, sizes=padded_sizes(4))
    sums, _ = batcher(np.ones((6, 2), np.float32))
    assert sums.shape == (6, 1)
    assert model.shapes == [(6, 2)]


def test_a_failing_batch_fails_its_requests_only_and_the_next_batch_runs():
    model = Recorder(fail_on=-1.0)
    batcher = Batcher(model, max_batch_size=4, timeout_s=0.5, sizes=padded_sizes(4))
    results = together(batcher, [np.full((1, 2), v, np.float32) for v in (1.0, -1.0)])
    assert all(isinstance(r, ValueError) for r in results)
    sums, _ = batcher(np.full((1, 2), 5.0, np.float32))
    assert sums.tolist() == [[10.0]]


def test_a_request_that_waits_too_long_times_out():
    gate = threading.Event()
    model = Recorder(gate=gate)
    batcher = Batcher(model, max_batch_size=2, timeout_s=0.001, sizes=(1, 2), request_timeout_s=0.3)
    outcome = []

    def hold() -> None:
        try:
            outcome.append(batcher(np.ones((1, 2), np.float32)))
        except BatchTimeout as exc:  # it waits on the closed gate as long as the second
            outcome.append(exc)

    first = threading.Thread(target=hold)
    first.start()  # holds the batch thread until the gate opens
    try:
        while not model.shapes:
            threading.Event().wait(0.01)
        with pytest.raises(BatchTimeout, match=r"no batch ran this request within 0\.3s"):
            batcher(np.ones((1, 2), np.float32))
    finally:
        gate.set()
        first.join(10)
    assert len(outcome) == 1


def test_text_rows_pad_with_empty_strings():
    model = Recorder()
    seen = []

    def texts(rows: np.ndarray) -> list[np.ndarray]:
        seen.append(rows.tolist())
        return [np.array([len(t) for t in rows], np.float32)]

    batcher = Batcher(texts, max_batch_size=4, timeout_s=0.2, sizes=(1, 2, 4))
    out = together(batcher, [np.array(["abc"], dtype=object) for _ in range(3)])
    assert [o[0].tolist() for o in out] == [[3.0]] * 3
    assert all(len(batch) in (1, 2, 4) for batch in seen)
    assert all(t in ("abc", "") for batch in seen for t in batch)
    assert model.shapes == []


# ---- the real models under uWSGI with threads ---------------------------------------------


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory, models_dir):
    """digits and iris under uWSGI, 2 workers of 8 threads, batches of up to 8 rows."""
    env = {"FUNFLEET_BATCHING": "1", "FUNFLEET_BATCH_MAX_SIZE": "8", "FUNFLEET_BATCH_TIMEOUT_MICROS": "20000"}
    yield from serve_uwsgi(tmp_path_factory, models_dir, threads=8, extra_env=env)


def test_a_batch_of_mixed_good_and_bad_requests(batching_server, samples):
    digits = [str(d) for d in range(10)]
    jobs = [("digit", d) for d in digits] + [("corrupt", "x"), ("iris-bad", "x"), ("digit", "3"), ("corrupt", "y")]

    def send(job):
        kind, value = job
        if kind == "digit":
            return requests.post(
                f"{batching_server}/predict", data=samples[value], headers={"Content-Type": "image/png"}, timeout=30
            )
        if kind == "corrupt":
            return requests.post(
                f"{batching_server}/predict", data=b"\x89PNG broken", headers={"Content-Type": "image/png"}, timeout=30
            )
        return requests.post(f"{batching_server}/predict?model=iris", json={"petal": 1}, timeout=30)

    before = requests.get(f"{batching_server}/metrics", timeout=10).text
    for _ in range(3):  # three rounds: the same answers whatever the batches were
        responses = together(send, jobs)
        for (kind, value), response in zip(jobs, responses, strict=True):
            if kind == "digit":
                assert response.status_code == 200, response.text
                assert response.json()["best_prediction"] == value
            elif kind == "corrupt":
                assert (response.status_code, response.json()["code"]) == (415, "unsupported_media")
            else:
                assert (response.status_code, response.json()["code"]) == (422, "invalid_features")
    after = requests.get(f"{batching_server}/metrics", timeout=10).text
    calls = counter(after, "funfleet_inference_batch_size_count") - counter(
        before, "funfleet_inference_batch_size_count"
    )
    rows = counter(after, "funfleet_inference_batch_size_sum") - counter(before, "funfleet_inference_batch_size_sum")
    assert rows == 33  # 11 good images a round: the bad ones never reached a batch
    assert calls < rows  # some model calls served several requests


def test_a_tfserving_batch_larger_than_the_batcher_runs_whole(batching_server, samples):
    from inference.preprocess import decode_image
    from inference.release import InputSpec

    spec = InputSpec(height=32, width=32)
    x = np.stack([decode_image(samples[str(d % 10)], spec, 1 << 24) for d in range(12)])
    response = requests.post(f"{batching_server}/v1/models/digits:predict", json={"instances": x.tolist()}, timeout=30)
    assert response.status_code == 200
    labels = np.array(response.json()["predictions"]).argmax(axis=1).tolist()
    assert labels == [d % 10 for d in range(12)]
