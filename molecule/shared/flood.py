#!/usr/bin/env python3
"""A hostile client at the rate limit: run inside a test host (standard library only), it sends
cheap hostile requests that pass nginx's parsing, so the per-client limits count them (random
methods, malformed KServe parameters, broken JSON), from several processes over keep-alive
connections, as fast as they go, and prints one JSON line: requests sent, statuses, seconds.

    flood.py HOST PORT SECONDS MAX_REQUESTS [PROCESSES]

Bounded in time and in requests; it targets only the address it is given.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import random
import string
import sys
import time
from collections import Counter

BODIES = [
    (
        "POST",
        "/v2/models/digits/infer",
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":"s"}]}',
    ),
    ("POST", "/v2/models/digits/infer", b'{"inputs":[],"parameters":[1]}'),
    ("POST", "/v1/models/digits:predict", b'{"instances": [[[[' * 50),
    ("POST", "/predict", b"not an image"),
]


def one(host: str, port: int, deadline: float, budget: int, seed: int) -> Counter:
    rng = random.Random(seed)
    statuses: Counter = Counter()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    for i in range(budget):
        if time.monotonic() > deadline:
            break
        if i % 3 == 0:
            method, path, body = "".join(rng.choices(string.ascii_uppercase, k=8)), "/healthz", None
        else:
            method, path, body = rng.choice(BODIES)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            statuses[response.status] += 1
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
        except (OSError, http.client.HTTPException) as exc:
            statuses[type(exc).__name__] += 1
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.close()
    return statuses


def main() -> None:
    host, port, seconds, max_requests = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    processes = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    started = time.monotonic()
    deadline = started + seconds
    args = [(host, port, deadline, max_requests // processes, seed) for seed in range(processes)]
    with multiprocessing.Pool(processes) as pool:
        results = pool.starmap(one, args)
    total: Counter = Counter()
    for result in results:
        total.update(result)
    took = time.monotonic() - started
    print(
        json.dumps(
            {"sent": sum(total.values()), "seconds": round(took, 1), "statuses": {str(k): v for k, v in total.items()}}
        )
    )


if __name__ == "__main__":
    main()
