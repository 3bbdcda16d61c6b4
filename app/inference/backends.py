"""One loader per framework a release may be saved with (frameworks.py's table names each one).
Each turns a verified release into a batched call, ``numpy batch -> one numpy array per output``,
and the model's own signature; each takes the release and a :class:`LoadContext`.

- ``keras``: TensorFlow's concrete function of the model's one signature, warmed up. The model is
  served as its file holds it: batch norms are folded at release time (release_tools.py), behind
  a parity gate, never in a worker;
- ``sklearn``: an estimator (or pipeline) saved with joblib: ``predict_proba`` for classifiers,
  ``predict`` otherwise. Loading a pickle runs code: the release's sha256, checked before this
  runs, is the trust anchor;
- ``onnx``: ONNX Runtime (a PyTorch export, or any ONNX model), checked at load against the
  exporter's reference outputs stored in the release (``reference.npz``);
- ``litert``: LiteRT with XNNPACK (a Keras model converted at release time, for CPU hosts: no
  TensorFlow in the worker), checked at load against the Keras model's outputs the converter
  stored (``reference.npz``).

Frameworks are imported only when a release needs them, so a worker pays for what it serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .frameworks import REFERENCE_FILE, framework
from .release import Release, ReleaseError

Call = Callable[[np.ndarray], list[np.ndarray]]
_log = logging.getLogger(__name__)

# ONNX element types -> numpy dtype names
_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a model's signature, as the model itself names and shapes it
    (-1: any size, the batch dimension first)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        return DTYPES.get(self.dtype, ("BYTES", ""))[0]

    @property
    def tf_dtype(self) -> str:
        return DTYPES.get(self.dtype, ("", "DT_INVALID"))[1]


# dtype name -> (KServe v2 datatype, TF Serving DataType)
DTYPES = {
    "float32": ("FP32", "DT_FLOAT"),
    "float64": ("FP64", "DT_DOUBLE"),
    "float16": ("FP16", "DT_HALF"),
    "int32": ("INT32", "DT_INT32"),
    "int64": ("INT64", "DT_INT64"),
    "uint8": ("UINT8", "DT_UINT8"),
    "bool": ("BOOL", "DT_BOOL"),
    "string": ("BYTES", "DT_STRING"),
}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class Loaded:
    call: Call
    signature: Signature
    warmup_seconds: float
    runtime: str  # the framework and its version, e.g. "onnxruntime 1.32.0"


@dataclass(frozen=True)
class LoadContext:
    """What every loader may use: threads for the frameworks' own pools, the batch sizes to warm
    up, and TensorFlow and Keras when the worker imported them (a framework that needs them)."""

    threads: int = 1
    warmup_sizes: tuple[int, ...] = (1,)
    tf: ModuleType | None = None
    keras: ModuleType | None = None


Loader = Callable[[Release, LoadContext], Loaded]


def loader_for(name: str) -> Loader:
    """The loader frameworks.py's table names for a framework; an unknown one is refused by name."""
    return globals()[framework(name).loader]


def check_input(release: Release, signature: Signature) -> None:
    """The model takes one input, of the shape its metadata promises."""
    if len(signature.inputs) != 1:
        raise ReleaseError(f"{release.name} has {len(signature.inputs)} inputs; one is served")
    given = signature.inputs[0].shape[1:]
    if len(given) != len(release.input.shape) or any(
        g not in (-1, w) for g, w in zip(given, release.input.shape, strict=True)
    ):
        raise ReleaseError(f"the model takes {list(given)}, the metadata says {list(release.input.shape)}")


def _shape(dims: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)


# ---- Keras ---------------------------------------------------------------------------------


def load_keras(release: Release, context: LoadContext) -> Loaded:
    """The model as saved: transformations (batch norms folded) were made at release time and are
    in the file the release's sha256 names, so a worker never rebuilds the model at start."""
    tf, keras = context.tf, context.keras
    if tf is None or keras is None:
        raise ReleaseError("a keras release needs TensorFlow and Keras imported in the worker")
    model = keras.saving.load_model(release.model_file, compile=False)
    signature = keras_signature(model)
    check_input(release, signature)
    dtype = getattr(tf, signature.inputs[0].dtype)
    spec = tf.TensorSpec([None, *release.input.shape], dtype)

    def concrete(served: Any) -> Any:
        # The concrete function of the one signature: a call skips tf.function's argument binding
        # and trace-cache lookup (0.40 ms instead of 0.60 ms a call at batch 1).
        return tf.function(lambda x: tuple(tf.nest.flatten(served(x, training=False)))).get_concrete_function(spec)

    fn = concrete(model)
    del model  # from here only the concrete function holds the weights
    runtime = f"keras {keras.__version__}"
    folded = int((release.extra.get("folding") or {}).get("batch_norms") or 0)
    if folded:
        runtime = f"{runtime} ({folded} batch norms folded)"
    started = time.monotonic()
    for size in context.warmup_sizes:
        shape = [size, *release.input.shape]
        [t.numpy() for t in fn(tf.fill(shape, "") if dtype == tf.string else tf.zeros(shape, dtype))]
    warmup = time.monotonic() - started

    def call(batch: np.ndarray) -> list[np.ndarray]:
        return [t.numpy() for t in fn(tf.constant(batch, dtype=dtype))]

    return Loaded(call, signature, warmup, runtime)


def keras_signature(model: Any) -> Signature:
    """The model's own input and output names, dtypes and shapes (Keras names outputs by layer)."""

    def info(tensor: Any, name: str) -> TensorInfo:
        return TensorInfo(name=name, dtype=str(tensor.dtype), shape=_shape(tensor.shape))

    inputs = tuple(info(t, t.name) for t in model.inputs)
    outputs = []
    for i, t in enumerate(model.outputs):
        history = getattr(t, "_keras_history", None)
        layer = getattr(history, "operation", None) if history is not None else None
        outputs.append(info(t, getattr(layer, "name", None) or f"output_{i}"))
    return Signature(inputs, tuple(outputs))


# ---- scikit-learn --------------------------------------------------------------------------


def load_sklearn(release: Release, context: LoadContext) -> Loaded:
    import joblib
    import sklearn

    saved = str(release.extra.get("sklearn_version", ""))
    if saved and saved.split(".")[:2] != sklearn.__version__.split(".")[:2]:
        # scikit-learn does not support unpickling across versions; refuse rather than guess.
        raise ReleaseError(
            f"saved with scikit-learn {saved}, this host has {sklearn.__version__}: re-save it with the host's version"
        )
    estimator = joblib.load(release.model_file)
    width = release.input.shape[0] if len(release.input.shape) == 1 else -1
    n_in = getattr(estimator, "n_features_in_", width)
    if width not in (-1, n_in):
        raise ReleaseError(f"the estimator takes {n_in} features, the metadata says {width}")
    if hasattr(estimator, "predict_proba") and release.labels:
        classes = len(getattr(estimator, "classes_", release.labels))
        if classes != len(release.labels):
            raise ReleaseError(f"the estimator has {classes} classes, labels.json {len(release.labels)}")
        method, output = estimator.predict_proba, TensorInfo("probabilities", "float32", (-1, classes))
    else:
        targets = int(getattr(estimator, "n_outputs_", 1) or 1)
        method = estimator.predict
        output = TensorInfo("predictions", "float32", (-1,) if targets == 1 else (-1, targets))
    signature = Signature((TensorInfo("features", "float32", (-1, *release.input.shape)),), (output,))
    started = time.monotonic()
    method(np.zeros((1, *release.input.shape), np.float32))
    warmup = time.monotonic() - started

    def call(batch: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(method(batch), dtype=np.float32)]

    return Loaded(call, signature, warmup, f"scikit-learn {sklearn.__version__}")


# ---- ONNX Runtime --------------------------------------------------------------------------


def load_onnx(release: Release, context: LoadContext) -> Loaded:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, context.threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(release.model_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types for a bad graph
        raise ReleaseError(f"ONNX Runtime cannot load {release.model_file.name}: {exc}") from exc

    def info(node: Any) -> TensorInfo:
        return TensorInfo(node.name, _ONNX_TYPES.get(node.type, "float32"), _shape(node.shape))

    signature = Signature(tuple(info(n) for n in session.get_inputs()), tuple(info(n) for n in session.get_outputs()))
    check_input(release, signature)
    input_name, dtype = signature.inputs[0].name, np.dtype(signature.inputs[0].dtype)
    names = [o.name for o in signature.outputs]

    def call(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(names, {input_name: np.ascontiguousarray(batch, dtype=dtype)})

    started = time.monotonic()
    check_reference(release, call, names)
    warmup = time.monotonic() - started
    return Loaded(call, signature, warmup, f"onnxruntime {ort.__version__}")


def load_litert(release: Release, context: LoadContext) -> Loaded:
    import threading

    from ai_edge_litert import interpreter as litert

    try:
        interp = litert.Interpreter(model_path=str(release.model_file), num_threads=max(1, context.threads))
        runner = interp.get_signature_runner()
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError for a bad flatbuffer
        raise ReleaseError(f"LiteRT cannot load {release.model_file.name}: {exc}") from exc
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    del runner  # it holds views of the interpreter's tensors, which would block resizing
    # The converter names outputs output_0, output_1...; the Keras names, in order, are in metadata.
    keras_names = [str(n) for n in release.extra.get("output_names") or []]
    litert_names = sorted(outputs, key=lambda n: (len(n), n))
    names = keras_names if len(keras_names) == len(litert_names) else litert_names

    def info(name: str, detail: dict) -> TensorInfo:
        shape = _shape([-1, *[int(d) for d in detail["shape_signature"][1:]]])
        return TensorInfo(name, np.dtype(detail["dtype"]).name, shape)

    input_detail = next(iter(inputs.values()))
    signature = Signature(
        tuple(info(n, d) for n, d in inputs.items()),
        tuple(info(shown, outputs[n]) for shown, n in zip(names, litert_names, strict=True)),
    )
    check_input(release, signature)
    index, dtype = input_detail["index"], np.dtype(input_detail["dtype"])
    out_indexes = [outputs[n]["index"] for n in litert_names]
    lock = threading.Lock()  # one interpreter per model: calls from threads take turns
    allocated: tuple[int, ...] = ()  # the input shape the interpreter's tensors are sized for

    def call(batch: np.ndarray) -> list[np.ndarray]:
        nonlocal allocated
        x = np.ascontiguousarray(batch, dtype=dtype)
        with lock:
            if x.shape != allocated:
                interp.resize_tensor_input(index, list(x.shape), strict=False)
                interp.allocate_tensors()
                allocated = x.shape
            interp.set_tensor(index, x)
            interp.invoke()
            return [interp.get_tensor(i).copy() for i in out_indexes]

    started = time.monotonic()
    check_reference(release, call, [o.name for o in signature.outputs])
    call(np.zeros((1, *release.input.shape), dtype))
    warmup = time.monotonic() - started
    version = getattr(litert, "__version__", "") or _dist_version("ai-edge-litert")
    return Loaded(call, signature, warmup, f"litert {version}")


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def check_reference(release: Release, call: Call, names: list[str]) -> None:
    """Run the model on the exporter's reference inputs and compare with the exporter's outputs
    (``reference.npz``: ``inputs`` and one array per output name). Required for ONNX and LiteRT
    releases: a wrong export, opset, conversion or runtime answers wrongly without failing, so it
    is refused instead."""
    if REFERENCE_FILE not in release.files:
        raise ReleaseError(
            f"a {release.framework} release needs {REFERENCE_FILE} (the exporter's outputs), listed in files"
        )
    tolerance = release.extra.get("reference_tolerance") or {}
    atol, rtol = float(tolerance.get("atol", 1e-4)), float(tolerance.get("rtol", 1e-3))
    with np.load(release.path / REFERENCE_FILE, allow_pickle=False) as ref:
        if "inputs" not in ref.files or any(n not in ref.files for n in names):
            raise ReleaseError(f"{REFERENCE_FILE} needs 'inputs' and the outputs {names}, has {ref.files}")
        expected = {n: ref[n] for n in names}
        got = dict(zip(names, call(ref["inputs"]), strict=True))
    for name in names:
        if got[name].shape != expected[name].shape:
            shapes = f"shape {list(got[name].shape)}, the exporter's {list(expected[name].shape)}"
            raise ReleaseError(f"output {name}: {shapes}")
        diff = float(np.max(np.abs(got[name].astype(np.float64) - expected[name]))) if got[name].size else 0.0
        if not np.allclose(got[name], expected[name], atol=atol, rtol=rtol):
            raise ReleaseError(
                f"output {name} differs from the exporter's reference by up to {diff:.3g} (atol {atol}, rtol {rtol})"
            )
