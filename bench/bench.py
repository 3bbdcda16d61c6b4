"""Throughput benchmark: prints a table per model and writes each into docs/benchmarks.md (its
own block, headed by the commit, date, machine and command; bench/benchdoc.py). Not a test;
numbers are ratios within one run. No other page copies them.

Models: the demo digits CNN (32x32, tiny: HTTP dominates) and MobileNetV2 at 224x224 (a
typical vision model: inference dominates). For each, in one run on this machine:
  raw       the compiled model call in one process with one TF thread, batch 1 (and 32), no HTTP;
  funfleet  what an app host runs: nginx -> uWSGI over a unix socket (master, lazy-apps,
            2 workers, TF threads 1/worker); once over HTTP, once over HTTPS (the cost of TLS:
            a throwaway self-signed P-256 certificate, TLS 1.3, keep-alive connections);
  funfleet batching  the same with adaptive micro-batching (16 uWSGI threads a worker, batches of
            up to 16, 2 ms wait);
  funfleet LiteRT  the same host serving the release converted by `python -m inference.release_tools convert`
            (LiteRT with XNNPACK, parity-gated against Keras; no TensorFlow in the workers);
  hand-tuned  an expert's hand-made uWSGI setup for the one model (bench/peer_handtuned.py:
            master, lazy-apps, 2 workers, 1 TF thread each, compiled call, no metrics or logs)
            behind nginx's uwsgi_pass;
  BentoML   BentoML's own recipe with adaptive batching (bench/peer_bentoml.py: an API service
            decoding uploads, a model service with 2 workers and a batchable API), in its own venv
            (.cache/bench-bentoml, bench/requirements-bentoml.txt), behind nginx;
  gunicorn  the same app under gunicorn's documented deployment: 2 sync workers behind nginx;
  uWSGI     uWSGI alone behind its own keep-alive HTTP router (what `make serve-app` runs);
  flask-dev the old recipe: Flask dev server, model.predict() per request;
at concurrency 1, 4 and 16 with wrk (loopback, each run bounded to --seconds, HTTP keep-alive
from the client), multipart uploads of one image. Prints served/raw at each concurrency.
nginx runs from a generated config in a temporary directory, not the system's.

``kinds``: every demo model kind on one funfleet host (nginx > uWSGI, every model loaded in each
worker), one /predict request per kind at c=1 and c=16: requests/s, p50, p99, the memory the
model adds to a worker, and the resident memory of a worker serving that model alone (a worker
with no Keras model never imports TensorFlow).
"""

from __future__ import annotations

import argparse
import getpass
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import benchdoc
import requests
import urllib3

# The HTTPS rows verify nothing: a throwaway self-signed certificate, on loopback.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
DIGITS_DIR = ROOT / "files" / "models" / "digits" / "1"
DIGIT_SAMPLE = ROOT / "files" / "samples" / "digits" / "7.png"
BIN = Path(sys.executable).parent
BOUNDARY = "funfleetbenchboundary"
BASE_INI = ROOT / "roles" / "uwsgi" / "files" / "base.ini"


@dataclass(frozen=True)
class Case:
    """A model to serve and the upload every request sends."""

    name: str
    model_dir: Path
    sample: bytes
    filename: str


def digits_case() -> Case:
    return Case("digits CNN 32x32", DIGITS_DIR, DIGIT_SAMPLE.read_bytes(), "7.png")


def mobilenet_case(tmp: Path) -> Case:
    """MobileNetV2 at 224x224 as a release folder, cut as any release is (its 52 batch norms
    folded at release time). No model hub is reachable, so the weights are Keras's seeded
    initialisation: the compute per image, which is all a throughput run measures, is the same as
    the trained model's; the gate checks the folded outputs, not top-1 labels, which random
    weights leave near ties. The upload is a 224x224 JPEG."""
    import keras
    from PIL import Image

    from inference.release import InputSpec, write_release_metadata
    from inference.release_tools import Gate, cut

    saved = tmp / "mobilenetv2-saved" / "1"
    saved.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    model.save(saved / "model.keras")
    spec = InputSpec(height=224, width=224, scale=1 / 127.5, offset=-1.0)
    write_release_metadata(
        saved,
        name="mobilenetv2",
        version="1",
        labels=[f"class_{i}" for i in range(1000)],
        spec=spec,
        top_k=5,
        extra={"description": "MobileNetV2 224x224, seeded random weights (benchmark only)"},
    )
    root = cut(saved, "1", out=tmp / "mobilenetv2" / "1", gate=Gate(min_top1=0.0)).path
    buf = io.BytesIO()
    Image.open(DIGIT_SAMPLE).convert("RGB").resize((224, 224)).save(buf, "JPEG", quality=90)
    return Case("MobileNetV2 224x224", root, buf.getvalue(), "sample.jpg")


def raw_throughput(case: Case, seconds: float) -> dict[int, float]:
    from inference.config import Settings
    from inference.preprocess import decode_image
    from inference.runtime import ModelRuntime

    rt = ModelRuntime(Settings.from_env({"model_dir": str(case.model_dir)}))
    rt.load()
    one = decode_image(case.sample, rt.release.input, 1 << 26)[None]
    out = {}
    for batch in (1, 32):
        x = one.repeat(batch, axis=0)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            rt.predict_batch(x)
            n += 1
        out[batch] = n * batch / (time.perf_counter() - start)
    return out


def wrk_script(tmp: Path, case: Case) -> Path:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{case.filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + case.sample
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return post_script(
        tmp / f"post-{case.model_dir.parent.name}.lua", f"multipart/form-data; boundary={BOUNDARY}", body
    )


def post_script(script: Path, content_type: str, body: bytes) -> Path:
    """A wrk script POSTing one body, printing a RESULT line that load() reads."""
    escaped = "".join(f"\\{b:03d}" for b in body)
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
        f'wrk.body = "{escaped}"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.errors.status,'
        " summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,"
        " latency:percentile(50), latency:percentile(99), summary.duration))\n"
        "end\n"
    )
    return script


def litert_release(case: Case, tmp: Path) -> Path | None:
    """The case's release converted to LiteRT (parity-gated against Keras on the case's sample);
    None, with the reason, if the conversion is refused."""
    samples = tmp / f"samples-{case.model_dir.parent.name}"
    samples.mkdir()
    (samples / case.filename).write_bytes(case.sample)
    out = tmp / f"litert-{case.model_dir.parent.name}" / "1"
    cmd = [sys.executable, "-m", "inference.release_tools", "convert", str(case.model_dir), "--out", str(out)]
    result = subprocess.run(
        [*cmd, "--samples", str(samples), "--max-abs-diff", "1e-3"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(APP)},
    )
    if result.returncode != 0:
        print(f"no LiteRT row for {case.name}: {result.stderr.strip()[-500:]}")
        return None
    return out


def load(url: str, conns: int, seconds: int, script: Path) -> dict:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(conns, 2)),
            "-c",
            str(conns),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    reqs, status_err, sock_err, p50, p99, dur = map(int, re.search(r"RESULT (.*)", out).group(1).split())
    return {"rps": reqs / (dur / 1e6), "errors": status_err + sock_err, "p50": p50 / 1000, "p99": p99 / 1000}


NGINX_CONF = """\
daemon off;
user {user};
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    uwsgi_temp_path {tmp}/uwsgi;
    fastcgi_temp_path {tmp}/fastcgi;
    scgi_temp_path {tmp}/scgi;
{server}
}}
"""
# gunicorn's documented deployment: sync workers behind a buffering nginx proxy.
PROXY_SERVER = """\
    client_max_body_size 10m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://unix:{sock};
            proxy_set_header Host $host;
        }}
    }}"""
# A peer listening on TCP (BentoML): a plain proxy to it.
PROXY_TCP_SERVER = """\
    client_max_body_size 10m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{inner};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
# The hand-tuned peer: nginx straight to uWSGI's socket, nothing else.
UWSGI_PASS_SERVER = """\
    client_max_body_size 10m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:{sock};
        }}
    }}"""
# What an app host runs: the nginx role's own site and snippets, rendered from its templates
# (ROLE_SITE_TLS: the same with a certificate, as a host that serves HTTPS).
ROLE_SITE = "ROLE_SITE"
ROLE_SITE_TLS = "ROLE_SITE_TLS"


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (P-256, as an ACME CA would issue), made once."""
    cert, key = tmp / "bench.crt", tmp / "bench.key"
    if not cert.exists():
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
                *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return cert, key


def render_role_site(tmp: Path, port: int, sock: Path, tls: bool) -> str:
    """The nginx role's http-level settings and app-host site for this port and socket, as
    `include` lines."""
    out = tmp / f"site-{port}"
    out.mkdir(exist_ok=True)  # each model case reuses the ports
    shutil.copy("/etc/nginx/uwsgi_params", tmp / "uwsgi_params")  # the site includes it relatively
    extra = ["-e", f"out={out}", "-e", f"port={port}", "-e", f"sock={sock}"]
    if tls:
        cert, key = self_signed(tmp)
        extra += ["-e", f"cert={cert}", "-e", f"key={key}"]
    subprocess.run(
        [str(BIN / "ansible-playbook"), str(ROOT / "bench" / "render-nginx.yml"), *extra],
        check=True,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    return f"    include {out}/funfleet-http.conf;\n    include {out}/funfleet-site.conf;"


class Server:
    """One row group of the table: a backend, optionally behind its own nginx on `port`."""

    def __init__(self, name: str, backend: list[str], env: dict, cwd: Path, location: str | None = None) -> None:
        self.name, self.backend, self.env, self.cwd, self.location = name, backend, env, cwd, location
        self.scheme = "https" if location == ROLE_SITE_TLS else "http"
        self.procs: list[subprocess.Popen] = []

    def start(self, port: int, tmp: Path, case: Case) -> None:
        sock = tmp / f"{port}.sock"
        inner = port + 100
        cmd = [a.format(port=port, sock=sock, inner=inner) for a in self.backend]
        self.procs.append(spawn(cmd, self.env, self.cwd))
        if self.location is not None:
            conf = tmp / f"nginx-{port}.conf"
            role_site = self.location in (ROLE_SITE, ROLE_SITE_TLS)
            server = render_role_site(tmp, port, sock, self.scheme == "https") if role_site else self.location
            conf.write_text(
                NGINX_CONF.format(
                    user=getpass.getuser(), tmp=tmp, server=server.format(port=port, sock=sock, inner=inner)
                )
            )
            self.procs.append(spawn(["nginx", "-c", str(conf)], self.env, tmp))
        await_serving(f"{self.scheme}://127.0.0.1:{port}", case)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)

    def worker_mib(self) -> float:
        """The largest resident memory among the backend's workers (itself if it has none)."""
        root = self.procs[0].pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == root:
                children.append(int(stat.parent.name))
        from inference.runtime import resident_bytes

        return max(resident_bytes(pid) for pid in children or [root]) / 2**20


def spawn(cmd: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def await_serving(base: str, case: Case) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            # verify=False: the benchmark's own throwaway certificate, on loopback.
            r = requests.post(
                f"{base}/predict", files={"image": (case.filename, case.sample)}, timeout=30, verify=False
            )
            if r.status_code == 200:
                # Give every worker time to finish loading before measuring.
                time.sleep(8)
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"nothing served a prediction at {base}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def uwsgi_command(workers: int) -> list[str]:
    """What every app host runs (the uwsgi role's base.ini) plus the local lines; the caller adds
    where it listens."""
    return [str(BIN / "uwsgi"), "--ini", str(BASE_INI), "--processes", str(workers), "--module", "wsgi:app"]


BENTOML_VENV = ROOT / ".cache" / "bench-bentoml"


def bentoml_server(env: dict, tmp: Path) -> list[Server]:
    binary = bentoml_venv()
    if binary is None:
        return []
    bento_env = {**env, "BENTOML_HOME": tempfile.mkdtemp(dir=tmp), "BENTOML_DO_NOT_TRACK": "true"}
    cmd = [str(binary), "serve", "peer_bentoml:Api", "--host", "127.0.0.1", "--port", "{inner}"]
    return [Server("BentoML nginx>BentoML", cmd, bento_env, ROOT / "bench", PROXY_TCP_SERVER)]


def bentoml_venv() -> Path | None:
    """BentoML in its own venv (its pins clash with the app's), sharing the main venv's
    TensorFlow through a .pth at the end of its path; None, with the reason, if it cannot be had."""
    python = BENTOML_VENV / "bin" / "python"
    if not (BENTOML_VENV / "bin" / "bentoml").exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(BENTOML_VENV)], check=True, timeout=120)
            site = subprocess.run(
                [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout.strip()
            main_site = next(p for p in sys.path if p.endswith("site-packages"))
            Path(site, "zz-funfleet-main.pth").write_text(main_site + "\n")
            subprocess.run(
                [
                    str(BENTOML_VENV / "bin" / "pip"),
                    "install",
                    "-q",
                    "-r",
                    str(ROOT / "bench" / "requirements-bentoml.txt"),
                ],
                check=True,
                timeout=900,
                capture_output=True,
            )
        except (subprocess.SubprocessError, OSError, StopIteration) as exc:
            print(f"no BentoML row: {exc}")
            shutil.rmtree(BENTOML_VENV, ignore_errors=True)
            return None
    return BENTOML_VENV / "bin" / "bentoml"


def servers(workers: int, env: dict, tmp: Path, litert_dir: Path | None) -> list[Server]:
    w = str(workers)
    uwsgi = uwsgi_command(workers)

    def app_env() -> dict:
        return {**env, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(dir=tmp)}

    batch_env = {**app_env(), "FUNFLEET_BATCHING": "1", "FUNFLEET_BATCH_MAX_SIZE": "16"}
    # Threads, with accept() serialised across workers, as the uwsgi role writes a batching host's ini.
    threaded = [*uwsgi, "--threads", "16", "--thunder-lock", "--socket", "{sock}"]
    batching = Server("funfleet batching", threaded, batch_env, APP, ROLE_SITE)
    lite = []
    if litert_dir is not None:
        lite_env = {**app_env(), "FUNFLEET_MODEL_DIR": str(litert_dir)}
        lite = [Server("funfleet LiteRT", [*uwsgi, "--socket", "{sock}"], lite_env, APP, ROLE_SITE)]
    return [
        Server("funfleet nginx>uWSGI", [*uwsgi, "--socket", "{sock}"], app_env(), APP, ROLE_SITE),
        Server("funfleet HTTPS", [*uwsgi, "--socket", "{sock}"], app_env(), APP, ROLE_SITE_TLS),
        batching,
        *lite,
        Server(
            "hand-tuned nginx>uWSGI",
            [
                *(str(BIN / "uwsgi"), "--master", "--lazy-apps", "--processes", w, "--socket", "{sock}"),
                *("--chmod-socket=660", "--wsgi-file", str(ROOT / "bench" / "peer_handtuned.py")),
                *("--callable", "app", "--disable-logging", "--enable-threads", "--die-on-term"),
            ],
            env,
            ROOT,
            UWSGI_PASS_SERVER,
        ),
        *bentoml_server(env, tmp),
        Server(
            "gunicorn nginx>gunicorn",
            [str(BIN / "gunicorn"), "-w", w, "-b", "unix:{sock}", "wsgi:app"],
            app_env(),
            APP,
            PROXY_SERVER,
        ),
        # What `make serve-app` runs: uWSGI's own HTTP router (keep-alive) in front of the workers.
        Server("uWSGI alone (http)", [*uwsgi, "--http", "127.0.0.1:{port}", "--http-keepalive"], app_env(), APP),
        Server(
            "flask dev + predict()",
            [sys.executable, str(ROOT / "bench" / "peer_flask_predict.py"), "{port}"],
            env,
            ROOT,
        ),
    ]


# name -> (content type, body) of one /predict?model=<name> request
KIND_MODELS = ["digits", "iris", "digit-segments", "tagger", "wine", "diabetes", "digits-onnx"]


def kind_requests() -> dict[str, tuple[str, bytes]]:
    import json

    def features(name: str, values: list[float]) -> bytes:
        meta = json.loads((ROOT / "files" / "models" / name / "1" / "metadata.json").read_text())
        return json.dumps(dict(zip(meta["input"]["features"], values, strict=True))).encode()

    png = DIGIT_SAMPLE.read_bytes()
    return {
        "digits": ("image/png", png),
        "iris": ("application/json", features("iris", [6.3, 3.3, 6.0, 2.5])),
        "digit-segments": ("image/png", png),
        "tagger": ("application/json", json.dumps({"text": "Bob works for Acme in Rome on may 3"}).encode()),
        "wine": (
            "application/json",
            features("wine", [13.2, 1.78, 2.14, 11.2, 100, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050]),
        ),
        "diabetes": ("application/json", features("diabetes", [59, 2, 32.1, 101, 157, 93.2, 38, 4, 4.86, 87])),
        "digits-onnx": ("image/png", png),
    }


def alone_rss(model_dir: Path) -> float:
    """Resident MiB of a process serving one model alone (the app loaded, the model warm)."""
    code = (
        "from inference.config import Settings; from inference.runtime import ModelRuntime, resident_bytes;"
        f"rt = ModelRuntime(Settings.from_env({{'model_dir': {str(model_dir)!r}}})); rt.load();"
        "import inference.api, flask; print(resident_bytes())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=APP, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    return int(out.split()[-1]) / 2**20


def run_kinds(args: argparse.Namespace, tmp: Path) -> str:
    """Every demo model kind on one host; prints the table and returns it as Markdown."""
    import json

    models = tmp / "kinds-model"
    for name in KIND_MODELS:
        shutil.copytree(ROOT / "files" / "models" / name / "1", models / name / "1")
    (models / "models.json").write_text(json.dumps({"models": [{"name": n, "versions": ["1"]} for n in KIND_MODELS]}))
    env = {
        **os.environ,
        "FUNFLEET_MODEL_DIR": str(models),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(dir=tmp),
        "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin",
    }
    server = Server("funfleet", [*uwsgi_command(args.workers), "--socket", "{sock}"], env, APP, ROLE_SITE)
    port = 18590
    rows = []
    try:
        server.start(port, tmp, digits_case())
        meta = requests.get(f"http://127.0.0.1:{port}/metadata", timeout=10).json()
        added = {m["name"]: m["memory_bytes"] / 2**20 for m in meta["models"]}
        for name, (content_type, body) in kind_requests().items():
            script = post_script(tmp / f"kind-{name}.lua", content_type, body)
            url = f"http://127.0.0.1:{port}/predict?model={name}"
            rows.append((name, [load(url, c, args.seconds, script) for c in (1, 16)]))
        worker = meta["runtime"]["resident_bytes"] / 2**20
    finally:
        server.stop()
    frameworks = {m["name"]: m["runtime"].split()[0] for m in meta["models"]}
    tasks = {m["name"]: m["task"] for m in meta["models"]}
    title = f"every model kind on one host ({args.workers} workers, each holding all {len(KIND_MODELS)} models)"
    print(f"\n== {title} ==")
    print(
        f"{'model':15} {'framework':13} {'task':15} {'c=1 req/s':>9} {'p50 ms':>7} {'c=16 req/s':>10} "
        f"{'p99 ms':>7} {'errors':>6} {'+MiB':>6} {'alone MiB':>9}"
    )
    cells = []
    for name, (one, many) in rows:
        alone_dir = tmp / f"alone-{name}"
        shutil.copytree(models / name / "1", alone_dir)
        alone = alone_rss(alone_dir)
        errors = one["errors"] + many["errors"]
        print(
            f"{name:15} {frameworks[name]:13} {tasks[name]:15} {one['rps']:>9.0f} {one['p50']:>7.1f} "
            f"{many['rps']:>10.0f} {many['p99']:>7.1f} {errors:>6} {added[name]:>6.1f} {alone:>9.0f}"
        )
        cells.append(
            [
                name,
                frameworks[name],
                tasks[name],
                f"{one['rps']:,.0f}",
                f"{one['p50']:.1f}",
                f"{many['rps']:,.0f}",
                f"{many['p99']:.1f}",
                str(errors),
                f"{added[name]:.1f}",
                f"{alone:,.0f}",
            ]
        )
    print(f"a worker holding all of them: {worker:.0f} MiB resident")
    sys.stdout.flush()
    header = [
        "model",
        "framework",
        "task",
        "c=1 req/s",
        "p50 ms",
        "c=16 req/s",
        "p99 ms",
        "errors",
        "+MiB",
        "alone MiB",
    ]
    return "\n\n".join(
        [
            f"### {title[0].upper()}{title[1:]}",
            "+MiB: what the model adds to a worker (the app's /metadata); alone MiB: the resident memory of a "
            "worker serving that model alone.",
            benchdoc.table(header, cells),
            f"A worker holding all of them: {worker:,.0f} MiB resident.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="funfleet throughput benchmark")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each load run (bounded)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--models", default="digits,mobilenetv2,kinds", help="any of digits, mobilenetv2, kinds (comma-separated)"
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=benchdoc.DOC,
        help="write each model's results into this page, in its own block (default docs/benchmarks.md); "
        "an empty value writes nothing",
    )
    args = parser.parse_args()
    for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing: apt-get install {pkg} (make bench does)")
    levels = [int(c) for c in args.concurrency.split(",")]
    unknown = set(args.models.split(",")) - {"digits", "mobilenetv2", "kinds"}
    if unknown:
        sys.exit(f"unknown --models {', '.join(sorted(unknown))}: any of digits, mobilenetv2, kinds")
    command = " ".join(["bench/bench.py", *sys.argv[1:]]) if sys.argv[1:] else "make bench (bench/bench.py)"
    tmp = Path(tempfile.mkdtemp(prefix="funfleet-bench-"))
    try:
        for chosen in args.models.split(","):
            if chosen == "kinds":
                body = run_kinds(args, tmp)
            else:
                body = run_case(digits_case() if chosen == "digits" else mobilenet_case(tmp), levels, args, tmp)
            # Each result set as soon as it is measured: a later failure keeps the earlier ones.
            if str(args.docs) not in ("", "."):
                benchdoc.write(chosen, "bench/bench.py (make bench)", command, body, args.docs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


WARMUP_SECONDS = 2


def run_case(case: Case, levels: list[int], args: argparse.Namespace, tmp: Path) -> str:
    """Runs every server on the case; prints the table and returns it as Markdown."""
    raw = raw_throughput(case, 3.0)
    script = wrk_script(tmp, case)
    env = {
        **os.environ,
        "FUNFLEET_MODEL_DIR": str(case.model_dir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin",
    }
    rows = []
    memory = {}
    table = servers(args.workers, env, tmp, litert_release(case, tmp))
    for i, server in enumerate(table):
        port = 18500 + i
        try:
            server.start(port, tmp, case)
            # Unrecorded warm-up at the top concurrency: every server meets the measured load with
            # its connections, caches and allocator arenas already in use, not cold from startup.
            load(f"{server.scheme}://127.0.0.1:{port}/predict", levels[-1], WARMUP_SECONDS, script)
            for c in levels:
                url = f"{server.scheme}://127.0.0.1:{port}/predict"
                rows.append((server.name, c, load(url, c, args.seconds, script)))
            memory[server.name] = server.worker_mib()
        finally:
            server.stop()

    header = (
        f"raw compiled call, one process, one TF thread: batch 1 = {raw[1]:.0f} img/s, "
        f"batch 32 = {raw[32]:.0f} img/s ({os.cpu_count()} cores; servers: {args.workers} workers; "
        "nginx and wrk share the cores)"
    )
    print(f"\n== {case.name} ==\n{header}")
    print(
        f"{'server':24} {'conc':>4} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'served/raw':>10} "
        f"{'worker MiB':>10}"
    )
    for name, c, r in rows:
        print(
            f"{name:24} {c:>4} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['errors']:>6} "
            f"{r['rps'] / raw[1]:>10.2f} {memory[name]:>10.0f}"
        )
    top = levels[-1]
    rps = {(n, c): r["rps"] for n, c, r in rows}
    p99 = {(n, c): r["p99"] for n, c, r in rows}
    p50 = {(n, c): r["p50"] for n, c, r in rows}
    ours = [s.name for s in table if s.name.startswith("funfleet")]
    peers = [s.name for s in table if not s.name.startswith("funfleet")]
    summary = [
        f"cost of TLS at c={top}: HTTPS / HTTP = {rps['funfleet HTTPS', top] / rps[table[0].name, top]:.2f}x requests/s"
    ]
    for name in ours:
        ratios = ", ".join(f"{rps[name, top] / rps[peer, top]:.2f}x {peer.split()[0]}" for peer in peers)
        best_p99 = min(p99[peer, top] for peer in peers)
        best_p50 = min(p50[peer, levels[0]] for peer in peers)
        summary.append(
            f"{name} at c={top}: {ratios}; p99 {p99[name, top]:.1f} ms (best peer {best_p99:.1f}); "
            f"c={levels[0]} p50 {p50[name, levels[0]]:.1f} ms (best peer {best_p50:.1f}); "
            f"worker {memory[name]:.0f} MiB (hand-tuned {memory.get('hand-tuned nginx>uWSGI', 0):.0f})"
        )
    print("\n".join(summary))
    sys.stdout.flush()
    cells = [
        [
            name,
            str(c),
            f"{r['rps']:,.1f}",
            f"{r['p50']:.1f}",
            f"{r['p99']:.1f}",
            str(r["errors"]),
            f"{r['rps'] / raw[1]:.2f}",
            f"{memory[name]:,.0f}",
        ]
        for name, c, r in rows
    ]
    return "\n\n".join(
        [
            f"### {case.name}",
            header[0].upper() + header[1:] + ".",
            benchdoc.table(
                ["server", "c", "images/s", "p50 ms", "p99 ms", "errors", "served/raw", "worker MiB"], cells
            ),
            "\n".join(f"- {line}" for line in summary),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
