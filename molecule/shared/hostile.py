"""Hostile and malformed requests, each class a function that sends one request to an edge and
returns its status: over the edge's limits (headers, request line, body), inside them but
costly for the hops behind (many short headers, a long query string), decoding bombs, malformed
protocols (KServe parameters, deep JSON, truncated multipart, garbage request lines) and random
HTTP methods. Raw sockets where a client library would refuse or fix the request.

    CLASSES: name -> (send(base) -> (status, body), statuses expected)
"""

from __future__ import annotations

import base64
import functools
import io
import json
import random
import socket
import ssl
import string
from collections.abc import Callable
from urllib.parse import urlsplit

import requests

# The fleet's request limits (roles/funfleet/defaults: funfleet_request_*).
LINE_KB, HEADERS_KB, BODY_MB = 8, 16, 8


def raw(base: str, request: bytes, timeout: float = 30) -> tuple[int, str]:
    """Send bytes as they are; the status and body of the answer (0 when the connection closed
    without one)."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port or 80), timeout=timeout)
    if url.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
        sock = context.wrap_socket(sock, server_hostname=url.hostname)
    with sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, body.decode("utf-8", "replace")


def get(path: str, headers: list[tuple[str, str]] = (), method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@functools.cache
def zero_png16() -> bytes:
    """4096x4096, 16 bits, all zero: a 35 KB PNG of 16.7 million pixels."""
    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((4096, 4096), np.uint16)).save(out, "PNG")
    return out.getvalue()


def post_json(base: str, path: str, payload: bytes, extra: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", "Connection": "close", **(extra or {})}
    r = requests.post(f"{base}{path}", data=payload, headers=headers, timeout=60, verify=False)
    return r.status_code, r.text


def kserve(parameters_case: str) -> Callable[[str], tuple[int, str]]:
    def send(base: str) -> tuple[int, str]:
        meta = requests.get(f"{base}/v2/models/digits", timeout=20, verify=False).json()
        tensor = {"name": meta["inputs"][0]["name"], "shape": [1, 28, 28, 1], "datatype": "FP32", "data": [0] * 784}
        body: dict = {"inputs": [tensor]}
        if parameters_case == "input":
            tensor["parameters"] = "binary"
        elif parameters_case == "request":
            body["parameters"] = ["binary_data_output"]
        else:
            body["outputs"] = [{"name": meta["outputs"][0]["name"], "parameters": 3}]
        return post_json(base, "/v2/models/digits/infer", json.dumps(body).encode())

    return send


RANDOM = random.Random(26)  # the same methods on every run


def random_method(base: str) -> tuple[int, str]:
    method = "".join(RANDOM.choices(string.ascii_uppercase, k=8))
    return raw(base, get("/healthz", method=method))


def truncated_multipart(base: str) -> tuple[int, str]:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n\x89PNG\r\n'
    headers = [("Content-Type", "multipart/form-data; boundary=XyZ"), ("Content-Length", str(len(body)))]
    return raw(base, get("/predict", headers, method="POST") + body)


def body_over_limit(base: str) -> tuple[int, str]:
    # The header announces the body; nginx refuses it from the header, before reading any of it.
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str((BODY_MB + 1) << 20))]
    return raw(base, get("/predict", headers, method="POST") + b"\0" * 65536)


def early_answer(path: str, method: str = "POST") -> Callable[[str], tuple[int, str]]:
    """A 7 MiB body (inside the limit) to a route that answers before reading it: unknown model,
    a method the route does not take. The hops behind must still take the whole body."""

    def send(base: str) -> tuple[int, str]:
        body = b"\0" * (7 << 20)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        return raw(base, get(path, headers, method=method) + body)

    return send


# name -> (send, expected statuses). "Legal" classes are large but inside every limit: each hop
# must take them (200), none may answer them with a 5xx.
CLASSES: dict[str, tuple[Callable[[str], tuple[int, str]], set[int]]] = {
    "headers over the edge's limit (3 x 6 KB)": (
        lambda base: raw(base, get("/healthz", [(f"X-Big-{i}", "a" * 6000) for i in range(3)])),
        {431},
    ),
    "a header line over the edge's limit (9 KB cookie)": (
        lambda base: raw(base, get("/healthz", [("Cookie", "a=" + "b" * 9000)])),
        {431},
    ),
    "request line over the edge's limit (9 KB URI)": (lambda base: raw(base, get("/healthz?q=" + "a" * 9000)), {414}),
    "body over the edge's limit (9 MiB)": (body_over_limit, {413}),
    "garbage request line": (lambda base: raw(base, b"\x16\x03\x01 GARBAGE\r\n\r\n"), {400}),
    "random 8-letter methods": (random_method, {405}),
    "decoding bomb: 128 x 16.7 Mpx PNG as b64 instances (5.6 MB)": (
        lambda base: post_json(
            base,
            "/v1/models/digits:predict",
            json.dumps({"instances": [{"b64": base64.b64encode(zero_png16()).decode()}] * 128}).encode(),
        ),
        {413},
    ),
    "KServe parameters as a string on an input": (kserve("input"), {400}),
    "KServe parameters as a list at the top level": (kserve("request"), {400}),
    "KServe parameters as a number on an output": (kserve("output"), {400}),
    "JSON nested 100,000 deep": (lambda base: post_json(base, "/v1/models/digits:predict", b"[" * 100_000), {400}),
    "truncated multipart upload": (truncated_multipart, {400, 415, 422}),
    "7 MiB body to an unknown model": (early_answer("/v1/models/nope:predict"), {404}),
    "7 MiB body to a GET-only route": (early_answer("/readyz"), {405}),
    "legal: 700 short headers (6 KB)": (
        lambda base: raw(base, get("/healthz", [(f"x{i}", "1") for i in range(700)])),
        {200},
    ),
    "2,000 bare-LF header lines": (
        lambda base: raw(base, b"GET /healthz HTTP/1.1\nHost: localhost\n" + b"a:\n" * 2000 + b"Connection: close\n\n"),
        {200, 431},
    ),
    "legal: a 7.9 KB query string": (lambda base: raw(base, get("/healthz?q=" + "a" * 7900)), {200}),
    "legal: two 7.9 KB headers": (
        lambda base: raw(base, get("/healthz", [(f"X-Big-{i}", "a" * 7900) for i in range(2)])),
        {200},
    ),
}
