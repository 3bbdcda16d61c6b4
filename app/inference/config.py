"""Settings, read from ``FUNFLEET_*`` environment variables, overridable by the factory's mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "files" / "models" / "digits" / "1"

# Former names, still read (from FUNFLEET_<NAME> and from the factory's mapping) so that hosts
# whose app.env a release older than the uwsgi role's rename wrote keep their values; the current
# name wins when both are set.
RENAMED = {"tf_intra_op_threads": "intra_op_threads", "max_batch": "max_request_instances"}


@dataclass(frozen=True)
class Settings:
    model_dir: Path = DEFAULT_MODEL_DIR
    # "sync": load and warm before the app object exists (uWSGI: the worker accepts nothing
    # until ready, which chain reloads rely on). "background": load in a thread, /readyz is 503
    # meanwhile. "none": never load (tests of readiness).
    model_load: str = "sync"
    max_content_length: int = 8 * 1024 * 1024
    # What decoding may cost a request (preprocess.PixelBudget): pixels in one image, and in all
    # the images of one request (a batch of b64 instances). Checked from each image's header.
    max_image_pixels: int = 4096 * 4096
    max_request_pixels: int = 2 * 4096 * 4096
    # Instances one request may hold (TF Serving's and KServe's batches, 400 batch_too_large
    # beyond). Not the micro-batcher's batch_max_size, the rows of one model call.
    max_request_instances: int = 128
    cors_origins: tuple[str, ...] = ()
    # Threads one model call may use, whatever runs it: TensorFlow's intra-op pool, ONNX
    # Runtime's intra_op_num_threads, LiteRT's num_threads. 0 keeps TensorFlow's default (all
    # cores; ONNX Runtime and LiteRT take 1); 1 per worker is fastest with one worker per core.
    intra_op_threads: int = 1
    tf_inter_op_threads: int = 1
    # "auto" uses a GPU when TensorFlow sees one; "cpu" hides GPUs; "gpu" (GPU hosts) requires
    # one: a worker that TensorFlow puts on the CPU is not ready, and /readyz says why.
    device: str = "auto"
    gpu_memory_growth: bool = True
    # GPUs on the host (set by the uwsgi role): with more than one, uWSGI worker i is pinned to
    # GPU (i-1) mod gpu_count, so workers spread over the GPUs instead of all taking GPU 0.
    gpu_count: int = 0
    # Batch sizes run once before the worker is ready. One size is enough to compile: the call is
    # one concrete function with a dynamic batch dimension, so other sizes never retrace. Each
    # larger size only grows TensorFlow's arena up front (MobileNetV2: a 1.16 GB worker warmed at
    # 1, 8 and 32 against 0.66 GB at 1), so warm up only the sizes the host really serves.
    warmup_batch_sizes: tuple[int, ...] = (1,)
    # Adaptive micro-batching (batching.py): requests a worker's threads hold at once run as one
    # batch of at most batch_max_size rows, waiting at most batch_timeout_micros for batch-mates,
    # padded to batch_sizes (default 1, 2, 4, ... batch_max_size), which are then the sizes
    # warmed up. Needs uWSGI threads; off by default (see the uwsgi role's uwsgi_batching).
    batching: bool = False
    batch_max_size: int = 16
    batch_timeout_micros: int = 2000
    batch_sizes: tuple[int, ...] = ()
    # POST /predict's common request (an image classifier's upload) served without Flask's
    # per-request machinery (fastpath.py): the same checks, bytes, metrics and access line.
    fast_predict: bool = True
    # One JSON access line a request in the app's log (with the request id nginx passes on).
    access_log: bool = True
    # While this file exists the host is drained (its nginx's doing); /metrics reports it.
    drain_file: str = ""

    @classmethod
    def from_env(cls, overrides: Mapping | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        names = {f.name for f in fields(cls)}
        values: dict = {}
        for old, name in RENAMED.items():
            raw = env.get(f"FUNFLEET_{old.upper()}")
            if raw is not None:
                values[name] = _parse(name, raw)
        for name in names:
            raw = env.get(f"FUNFLEET_{name.upper()}")
            if raw is not None:
                values[name] = _parse(name, raw)
        given = {key.lower(): value for key, value in (overrides or {}).items()}
        for key, value in sorted(given.items(), key=lambda item: item[0] not in RENAMED):
            name = RENAMED.get(key, key)
            if name not in names:
                raise ValueError(f"unknown setting {key!r}")
            values[name] = _parse(name, value) if isinstance(value, str) else value
        settings = cls(**values)
        if settings.model_load not in ("sync", "background", "none"):
            raise ValueError(f"model_load must be sync, background or none, not {settings.model_load!r}")
        if settings.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be auto, cpu or gpu, not {settings.device!r}")
        return settings


def _parse(name: str, raw: str):
    if name == "model_dir":
        return Path(raw)
    if name in ("cors_origins",):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name in ("warmup_batch_sizes", "batch_sizes"):
        return tuple(int(part) for part in raw.split(",") if part.strip())
    if name in ("gpu_memory_growth", "access_log", "batching", "fast_predict"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name in (
        "max_content_length",
        "max_image_pixels",
        "max_request_pixels",
        "max_request_instances",
        "intra_op_threads",
        "tf_inter_op_threads",
        "gpu_count",
        "batch_max_size",
        "batch_timeout_micros",
    ):
        return int(raw)
    return raw
