"""Where a /predict request's CPU goes inside a worker, beyond the model: cProfile over a bounded
loop of real requests through the WSGI app (the same code uWSGI runs; nginx and the socket are
not in it), split into the request path's stages. ``--flask`` profiles the request as Flask
serves it, with the fast path (app/inference/fastpath.py) off. Prints a table; not a test.

    .venv/bin/python bench/profile_request.py [--requests 2000] [--model-dir files/models/digits/1] [--flask]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "app"))

# (stage, file suffix, function name): cumulative time of these functions
STAGES = [
    ("model call", "inference/backends.py", "call"),
    ("image decode and resize (Pillow)", "inference/preprocess.py", "decode_image"),
    ("multipart parse", "inference/multipart.py", "split_form_data"),
    ("top-k", "inference/api/predict.py", "ranked"),
    ("access log line (JSON)", "inference/logs.py", "access"),
]
# (stage, path part): own time of the functions in these files
PACKAGES = [
    ("Prometheus metrics (multiprocess files)", "prometheus_client"),
    ("request bookkeeping layer (own code)", "inference/bookkeeping.py"),
]


def report(stats: dict, plain: float, total: float, requests: int, flask: bool) -> None:
    """The table: ``stats`` is pstats' (file, line, name) -> (cc, nc, tt, ct, callers)."""

    def cumulative(suffix: str, name: str) -> float:
        return sum(v[3] for (f, _, n), v in stats.items() if f.endswith(suffix) and n == name)

    def package(part: str) -> float:
        return sum(v[2] for (f, _, _), v in stats.items() if part in f)

    per = 1000 / requests
    print(
        f"{requests} POST /predict through the WSGI app: {plain * per:.3f} ms CPU a request "
        f"({total * per:.3f} ms under the profiler; the shares below are the profiler's)"
    )
    print(f"{'stage':44} {'ms/request':>10} {'share':>6}")
    accounted = 0.0
    rows = [(name, cumulative(suffix, fn)) for name, suffix, fn in STAGES]
    rows += [(name, package(part)) for name, part in PACKAGES]
    for name, seconds in rows:
        accounted += seconds
        print(f"{name:44} {seconds * per:>10.3f} {seconds / total:>6.1%}")
    rest = total - accounted
    glue = ("fast path", "Flask/Werkzeug")[flask] + ", JSON answer, the rest"
    print(f"{glue:44} {rest * per:>10.3f} {rest / total:>6.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "files" / "models" / "digits" / "1")
    parser.add_argument("--sample", type=Path, default=ROOT / "files" / "samples" / "digits" / "7.png")
    parser.add_argument("--flask", action="store_true", help="with the fast path off: Flask serves the request")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="funfleet-profile-")
    import io

    import requests
    from werkzeug.test import EnvironBuilder

    from inference import create_app

    app = create_app({"model_dir": str(args.model_dir), "fast_predict": not args.flask})
    png = args.sample.read_bytes()
    # The request as nginx hands it over: a multipart upload encoded as requests (urllib3) encodes
    # it, with a plain boundary as curl and browsers send too, encoded once: only the app runs.
    prepared = requests.Request("POST", "http://x/predict", files={"image": ("7.png", png)}).prepare()
    body = prepared.body
    environ = EnvironBuilder(
        path="/predict", method="POST", content_type=prepared.headers["Content-Type"], data=body
    ).get_environ()
    status: list[str] = []

    def start_response(code: str, headers: list, exc_info: object = None) -> None:
        status.append(code)

    def one() -> None:
        env = {**environ, "wsgi.input": io.BytesIO(body)}
        b"".join(app.wsgi_app(env, start_response))
        assert status.pop().startswith("200"), "the request failed"

    for _ in range(50):  # warm
        one()
    devnull = open(os.devnull, "w")  # noqa: SIM115  (the access log goes to stderr; keep it out of the table)
    stderr, sys.stderr = sys.stderr, devnull
    started = time.process_time()
    for _ in range(args.requests):
        one()
    plain = time.process_time() - started
    profiler = cProfile.Profile(time.process_time)
    started = time.process_time()
    profiler.enable()
    for _ in range(args.requests):
        one()
    profiler.disable()
    total = time.process_time() - started
    sys.stderr = stderr
    report(pstats.Stats(profiler).stats, plain, total, args.requests, args.flask)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
