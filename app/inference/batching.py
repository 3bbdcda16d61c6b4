"""Adaptive micro-batching inside a worker, as TF Serving's and Triton's dynamic batchers do it.

Requests a worker's threads (uWSGI ``threads``) hold at the same time are queued per model
version and run as one batch: the batcher takes queued requests in arrival order until the batch
holds ``max_batch_size`` rows or the oldest request has waited ``batch_timeout_micros``, pads the
rows to the smallest of a few fixed sizes (so the model's compiled call sees only the sizes
warmed up at start), runs the model once and hands each request its own rows back. It waits
for batch-mates only while the worker holds requests that are not queued yet (``IN_FLIGHT``,
counted by the app): a lone request runs at once instead of paying the timeout.

Per-request errors stay per request: inputs are checked before they are queued, so a bad one
never reaches a batch; a request larger than ``max_batch_size`` runs alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import metrics

Call = Callable[[np.ndarray], list[np.ndarray]]


class InFlight:
    """Requests this worker is handling now (its threads), counted by the bookkeeping layer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def enter(self) -> None:
        with self._lock:
            self._count += 1

    def exit(self) -> None:
        with self._lock:
            self._count -= 1

    def __call__(self) -> int:
        return self._count


IN_FLIGHT = InFlight()


class BatchTimeout(RuntimeError):
    """The request waited longer than the batcher's request timeout for its batch to run."""


@dataclass(eq=False)  # compared by identity: each request is its own
class _Pending:
    rows: np.ndarray
    queued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[np.ndarray] | None = None
    error: BaseException | None = None


def padded_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to max_batch_size (included): few sizes, little padding."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


class Batcher:
    """One model version's queue and the thread that runs its batches."""

    def __init__(
        self,
        call: Call,
        *,
        max_batch_size: int,
        timeout_s: float,
        sizes: tuple[int, ...],
        request_timeout_s: float = 30.0,
        name: str = "model",
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self._in_flight = in_flight
        self._call = call
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.sizes = tuple(sorted(sizes))
        self.request_timeout_s = request_timeout_s
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._name = name

    def __call__(self, rows: np.ndarray) -> list[np.ndarray]:
        if len(rows) >= self.max_batch_size:
            return self._run_padded(rows)
        pending = _Pending(rows)
        with self._cond:
            self._start()
            self._queue.append(pending)
            self._cond.notify()
        if not pending.done.wait(self.request_timeout_s):
            with self._cond:
                if pending in self._queue:
                    self._queue.remove(pending)
            if not pending.done.is_set():
                raise BatchTimeout(f"no batch ran this request within {self.request_timeout_s:g}s")
        if pending.error is not None:
            raise pending.error
        assert pending.outputs is not None
        return pending.outputs

    def _start(self) -> None:
        # Started on first use, after uWSGI forked the worker (threads do not survive a fork).
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=f"batcher-{self._name}", daemon=True)
            self._thread.start()

    def _take(self) -> list[_Pending]:
        """Wait for a first request, then for batch-mates until the batch is full or the first
        request has waited the timeout; return the requests of one batch, in arrival order."""
        with self._cond:
            while not self._queue:
                self._cond.wait()
            deadline = self._queue[0].queued + self.timeout_s
            while sum(len(p.rows) for p in self._queue) < self.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self._in_flight is None:
                    self._cond.wait(left)
                elif self._in_flight() <= len(self._queue):
                    break  # every request the worker holds is queued: nobody else will join
                else:
                    self._cond.wait(min(left, 0.0002))
            batch, rows, now = [], 0, time.monotonic()
            while self._queue and rows + len(self._queue[0].rows) <= self.max_batch_size:
                pending = self._queue.popleft()
                metrics.BATCH_WAIT.observe(now - pending.queued)
                batch.append(pending)
                rows += len(pending.rows)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                continue
            try:
                outputs = self._run_padded(np.concatenate([p.rows for p in batch]))
            except Exception as exc:  # the model failed: every request of the batch gets the error
                for p in batch:
                    p.error = exc
                    p.done.set()
                continue
            start = 0
            for p in batch:
                end = start + len(p.rows)
                p.outputs = [out[start:end] for out in outputs]
                p.done.set()
                start = end

    def _run_padded(self, rows: np.ndarray) -> list[np.ndarray]:
        n = len(rows)
        size = next((s for s in self.sizes if s >= n), n)
        if size > n:
            pad = np.zeros((size - n, *rows.shape[1:]), dtype=rows.dtype)
            if rows.dtype == object:
                pad[...] = ""
            rows = np.concatenate([rows, pad])
        metrics.BATCH.observe(n)
        metrics.BATCH_PADDED.observe(size)
        return [out[:n] for out in self._call(rows)]
