"""The model runtime: load every declared model version once per process with its framework's
loader (backends.py), warm it up, and serve them by name and version.

Everything that runs a model goes through :meth:`ServedModel.predict`, the one batched entry
point every endpoint and protocol shares.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from . import metrics
from .backends import DTYPES, Call, LoadContext, Signature, TensorInfo, loader_for
from .batching import IN_FLIGHT, Batcher, padded_sizes
from .config import Settings
from .frameworks import framework, version_key
from .metrics import resident_bytes
from .models import Declared, discover, labels, output_buckets
from .release import Release, ReleaseError, read_release, read_release_id

__all__ = ["DTYPES", "ModelNotFound", "ModelRuntime", "ServedModel", "Signature", "TensorInfo", "resident_bytes"]

log = logging.getLogger(__name__)


@dataclass
class LoadInfo:
    loaded_at: float
    load_seconds: float
    warmup_seconds: float
    device: str
    tensorflow: str | None
    keras: str | None


class ServedModel:
    """One loaded model version: its release, signature and batched call."""

    def __init__(self, release: Release, signature: Signature, call: Call, runtime: str, memory_bytes: int) -> None:
        self.release = release
        self.signature = signature
        self.memory_bytes = memory_bytes
        self.runtime = runtime
        self._call = call
        # The model's output buckets (models.json), which its first output's values are counted in.
        self.output_buckets: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        return self.release.name

    @property
    def version(self) -> str:
        return self.release.version

    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the model on a batch of ``[N, *input shape]``; one array per output, in the
        signature's order, each with N rows."""
        return self._call(batch)

    @property
    def batched(self) -> bool:
        """Whether calls go through a micro-batcher (which records the batch sizes it runs)."""
        return isinstance(self._call, Batcher)


class ModelNotFound(LookupError):
    def __init__(self, name: str, version: str | None) -> None:
        super().__init__(name, version)
        self.name, self.version = name, version


class LabelNotFound(ModelNotFound):
    """A model served here, asked for by a version label it does not have."""

    def __init__(self, name: str, label: str) -> None:
        super().__init__(name, None)
        self.label = label


class ModelRuntime:
    """Every model version the host serves. Ready when all of them are loaded and warm."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, dict[str, ServedModel]] = {}
        self.release_id: str | None = None
        self.info: LoadInfo | None = None
        self.error: str | None = None
        self.declared: list[Declared] = []
        self.labels: dict[str, dict[str, str]] = {}
        self.output_buckets: dict[str, tuple[float, ...]] = {}
        self._ready = False
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def default_name(self) -> str | None:
        return next(iter(self.models), None)

    @property
    def release(self) -> Release | None:
        """The default model's latest release."""
        name = self.default_name
        return None if name is None else self.get(name).release

    def versions(self, name: str) -> list[str]:
        """The versions of a model served, oldest first."""
        if name not in self.models:
            raise ModelNotFound(name, None)
        return sorted(self.models[name], key=version_key)

    def get(self, name: str | None = None, version: str | None = None, label: str | None = None) -> ServedModel:
        """A model by name (default: the first declared), at a version or the version a label
        names (default: its latest). Callers refuse a request that gives both."""
        name = name or self.default_name or ""
        by_version = self.models.get(name)
        if not by_version:
            raise ModelNotFound(name, version)
        if label is not None:
            version = self.labels.get(name, {}).get(label)
            if version is None:
                raise LabelNotFound(name, label)
        if version is None:
            return by_version[self.versions(name)[-1]]
        if version not in by_version:
            raise ModelNotFound(name, version)
        return by_version[version]

    def all(self) -> list[ServedModel]:
        return [self.models[name][v] for name in self.models for v in self.versions(name)]

    def load(self) -> None:
        """Read, verify, compile and warm every declared model. Must run after uWSGI forks (lazy-apps)."""
        with self._lock:
            if self._ready:
                return
            started = time.monotonic()
            warmup = 0.0
            current: Declared | None = None
            try:
                self.declared = discover(self.settings.model_dir)
                self.labels = labels(self.settings.model_dir, self.declared)
                self.output_buckets = output_buckets(self.settings.model_dir)
                self.release_id = read_release_id(self.settings.model_dir)
                releases = []
                for current in self.declared:
                    releases.append(_read_declared(current))
                current = None
                # TensorFlow (~0.5 GB a worker) only where a framework that needs it is served.
                tf = keras = None
                if any(framework(r.framework).needs_tensorflow for r in releases):
                    tf, keras = _import_tensorflow(self.settings)
                    require_gpu(tf, self.settings)
                for index, release in enumerate(releases):
                    current = self.declared[index]
                    served, seconds = _load_one(release, tf, keras, self.settings)
                    served.output_buckets = self.output_buckets.get(served.name, ())
                    warmup += seconds
                    self.models.setdefault(served.name, {})[served.version] = served
                device = _device_of(tf) if tf is not None else "/device:CPU:0"
            except Exception as exc:  # keep the worker alive; /readyz reports why
                where = f"{current.name}:{current.version}: " if current is not None else ""
                prefix = "" if isinstance(exc, ReleaseError) else f"{type(exc).__name__}: "
                self.error = f"{where}{prefix}{exc}"
                self.models, self.labels, self.output_buckets = {}, {}, {}
                raise
            done = time.monotonic()
            self.info = LoadInfo(
                loaded_at=time.time(),
                load_seconds=round(done - started - warmup, 3),
                warmup_seconds=round(warmup, 3),
                device=device,
                tensorflow=tf.__version__ if tf is not None else None,
                keras=keras.__version__ if keras is not None else None,
            )
            self.error = None
            self._ready = True
            for served in self.all():
                metrics.MODEL_READY.labels(served.name, served.version).set(1)
                metrics.MODEL_MEMORY.labels(served.name, served.version).set(served.memory_bytes)
            default = self.release
            metrics.RELEASE.labels(self.release_id or "", default.name, default.version).set(1)
            names = ", ".join(f"{m.name}:{m.version}" for m in self.all())
            log.info("models %s ready on %s in %.1fs", names, device, done - started)

    def load_in_background(self) -> threading.Thread:
        def run() -> None:
            try:
                self.load()
            except Exception:
                log.exception("model load failed")

        thread = threading.Thread(target=run, name="model-load", daemon=True)
        thread.start()
        return thread

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """The default model's first output for a batch (benchmarks and scripts)."""
        return self.get().predict(batch)[0]


def _read_declared(declared: Declared) -> Release:
    release = read_release(declared.path)
    if (release.name, release.version) != (declared.name, declared.version):
        raise ReleaseError(
            f"{declared.path} holds {release.name}:{release.version}, not {declared.name}:{declared.version}"
        )
    return release


def _load_one(
    release: Release, tf: ModuleType | None, keras: ModuleType | None, settings: Settings
) -> tuple[ServedModel, float]:
    before = resident_bytes()
    sizes = batch_sizes(settings)
    load = loader_for(release.framework)  # frameworks.py's table: an unknown framework is refused by name
    # Warm up what will really run: the padded sizes when batching, else the configured ones.
    context = LoadContext(settings.intra_op_threads or 1, tuple(sizes or settings.warmup_batch_sizes), tf, keras)
    loaded = load(release, context)
    trim_heap()
    memory = max(0, resident_bytes() - before)
    call = loaded.call
    if sizes:
        call = Batcher(
            call,
            max_batch_size=settings.batch_max_size,
            timeout_s=settings.batch_timeout_micros / 1e6,
            sizes=sizes,
            name=f"{release.name}-{release.version}",
            in_flight=IN_FLIGHT,
        )
    return ServedModel(release, loaded.signature, call, loaded.runtime, memory), loaded.warmup_seconds


def trim_heap() -> None:
    """Give the heap pages loading freed back to the OS (glibc's ``malloc_trim``; a no-op where
    the C library has none). Loading leaves them behind: Keras's loader, the first calls.
    MobileNetV2 with TensorFlow: a 682 MiB worker without, 653 MiB with, after 100 calls."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def batch_sizes(settings: Settings) -> tuple[int, ...]:
    """The padded batch sizes when batching is on (the largest being batch_max_size), else ()."""
    if not settings.batching or settings.batch_max_size < 2:
        return ()
    sizes = tuple(sorted({s for s in settings.batch_sizes if 0 < s < settings.batch_max_size}))
    return (*sizes, settings.batch_max_size) if sizes else padded_sizes(settings.batch_max_size)


def _import_tensorflow(settings: Settings):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if settings.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    elif settings.gpu_count > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        gpu = gpu_for_worker(_uwsgi_worker_id(), settings.gpu_count)
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    with hidden_modules(*_UNUSED_BY_TENSORFLOW):
        import keras
        import tensorflow as tf

    try:
        if settings.intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(settings.intra_op_threads)
        if settings.tf_inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(settings.tf_inter_op_threads)
        if settings.gpu_memory_growth:
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        # TensorFlow is already initialised in this process (tests load twice): keep its settings.
        pass
    return tf, keras


# TensorFlow's legacy Keras imports SciPy, and Keras its scikit-learn wrappers (so scikit-learn and
# SciPy), whenever they are installed, as they are here for scikit-learn releases. Serving a
# Keras model uses neither, and they cost 69 MiB a worker (565 MiB after importing TensorFlow and
# Keras, 496 without them). Both take their absence at import (ImportError: the feature is off).
_UNUSED_BY_TENSORFLOW = ("sklearn", "scipy")


@contextmanager
def hidden_modules(*names: str) -> Iterator[None]:
    """Imports of ``names`` fail (ImportError) inside the block, unless already imported; they
    import normally after it (a scikit-learn release loaded next still gets scikit-learn)."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not importable"
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def require_gpu(tf: ModuleType, settings: Settings) -> None:
    """On a GPU host (device "gpu") a worker TensorFlow would run on the CPU is not ready: a
    silent CPU fallback serves at a tenth of the speed and looks healthy."""
    if settings.device != "gpu" or tf.config.list_logical_devices("GPU"):
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise RuntimeError(
        "this is a GPU host (FUNFLEET_DEVICE=gpu) but TensorFlow sees no GPU in this worker"
        f" (CUDA_VISIBLE_DEVICES={visible!r}, TensorFlow {tf.__version__} built with CUDA:"
        f" {tf.test.is_built_with_cuda()}); check the driver, /dev/nvidia* and the CUDA wheels"
    )


def gpu_for_worker(worker_id: int | None, gpu_count: int) -> int | None:
    """The GPU a uWSGI worker (ids from 1) is pinned to; None outside uWSGI or without GPUs."""
    if not worker_id or gpu_count < 1:
        return None
    return (worker_id - 1) % gpu_count


def _uwsgi_worker_id() -> int | None:
    try:
        import uwsgi  # type: ignore[import-not-found]  # only inside a uWSGI worker
    except ImportError:
        return None
    return int(uwsgi.worker_id()) or None


def _device_of(tf: ModuleType) -> str:
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "/device:CPU:0"
