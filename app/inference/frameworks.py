"""The frameworks a model release may be saved with: the one table the app and the controller read.

The app reads it through the package (release.py, backends.py, runtime.py). The controller reads
this file by path: plugins/filter/app_release_models.py loads it from the
checked-out repo, so that it refuses an unknown framework, finds the model file and estimates a
worker's memory exactly as the app will, before anything is shipped. It therefore imports nothing
but the standard library, and nothing from the package: the controller has neither the app's
dependencies (TensorFlow, NumPy, Flask) nor ``inference`` on its path.

A new framework is a row here, its loader in backends.py (named by the row) and its packages in
app/requirements*.txt; app/tests/test_frameworks.py checks the last two against this table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT = "keras"
# The exporter's or converter's outputs for known inputs, checked again when the model loads.
REFERENCE_FILE = "reference.npz"


@dataclass(frozen=True)
class Framework:
    name: str
    # The file the release's sha256 names (metadata.json "sha256").
    model_file: str
    # The function in backends.py that turns a verified release into a batched call.
    loader: str
    # The distributions a worker imports for it (names as app/requirements*.txt spell them, or
    # their prefix: "tensorflow" is tensorflow-cpu on CPU hosts).
    packages: tuple[str, ...]
    # Memory, in MiB: the framework's runtime, imported once per worker; a loaded and warmed model,
    # model_base_mb plus model_file_factor times its file's size.
    runtime_mb: int
    model_base_mb: int
    model_file_factor: float
    # Other files a release of this framework must list in its metadata's "files" (and so ship
    # with their sha256): checked on the controller before shipping and by the app before loading.
    required_files: tuple[str, ...] = ()
    # Whether its loader needs TensorFlow and Keras imported in the worker (~0.5 GB).
    needs_tensorflow: bool = False
    # Whether loading the model file runs code from it (a pickle): the controller ships such a
    # model only where the inventory allows it by name (allow_pickle in app_release_models).
    runs_code_on_load: bool = False


# Memory measured on a 2-core VM: a worker with the app alone holds about 48 MiB. TensorFlow and
# Keras add about 512 MiB, scikit-learn (with SciPy) about 88, ONNX Runtime about 32, LiteRT
# about 16. A Keras model adds about 8 MiB plus 16 times its file's size (the digits CNN: 1.6 MB
# on disk, 32 MiB in a worker); a joblib, ONNX or LiteRT model about 2 MiB plus 4 times its size
# (wine: 8 MiB with scikit-learn already imported; the digits CNN as LiteRT: a 66 MiB worker).
WORKER_BASE_MB = 48
FRAMEWORKS: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework(
            "keras",
            model_file="model.keras",
            loader="load_keras",
            packages=("keras", "tensorflow"),
            runtime_mb=512,
            model_base_mb=8,
            model_file_factor=16,
            needs_tensorflow=True,
        ),
        # An estimator or pipeline saved with joblib.
        Framework(
            "sklearn",
            model_file="model.joblib",
            loader="load_sklearn",
            packages=("scikit-learn",),
            runtime_mb=88,
            model_base_mb=2,
            model_file_factor=4,
            runs_code_on_load=True,
        ),
        # A PyTorch export, or any ONNX graph, run by ONNX Runtime.
        Framework(
            "onnx",
            model_file="model.onnx",
            loader="load_onnx",
            packages=("onnxruntime",),
            runtime_mb=32,
            model_base_mb=2,
            model_file_factor=4,
            required_files=(REFERENCE_FILE,),
        ),
        # A Keras model converted for CPU hosts at release time (python -m inference.release_tools convert).
        Framework(
            "litert",
            model_file="model.tflite",
            loader="load_litert",
            packages=("ai-edge-litert",),
            runtime_mb=16,
            model_base_mb=2,
            model_file_factor=4,
            required_files=(REFERENCE_FILE,),
        ),
    )
}


class UnknownFramework(ValueError):
    """A release names a framework this table does not hold."""


def framework(name: str) -> Framework:
    """The row of a framework named in a release's metadata; refused by name if there is none."""
    try:
        return FRAMEWORKS[name]
    except KeyError:
        known = ", ".join(sorted(FRAMEWORKS))
        raise UnknownFramework(
            f"unknown framework {name!r}: funfleet serves {known} (inference/frameworks.py)"
        ) from None


def check_files(name: str, listed: Iterable[str]) -> Framework:
    """The framework's row, once the release's listed ``files`` hold every file it requires."""
    row = framework(name)
    missing = [f for f in row.required_files if f not in set(listed)]
    if missing:
        raise ValueError(f"{name} releases must list {', '.join(missing)} in their metadata's files")
    return row


def worker_memory_mb(models: Iterable[tuple[str, int]]) -> int:
    """Estimated resident memory (MiB) of one worker serving these ``(framework, model file size
    in bytes)`` pairs: the app, each framework's runtime once, and each model."""
    pairs = [(framework(name), size) for name, size in models]
    runtimes = sum(row.runtime_mb for row in {row.name: row for row, _size in pairs}.values())
    per_model = sum(row.model_base_mb + row.model_file_factor * size / 2**20 for row, size in pairs)
    return int(WORKER_BASE_MB + runtimes + per_model + 0.5)


def version_key(version: str) -> tuple[int, int | str]:
    """The order of a model's versions, here because the controller (version policies) and the app
    (the latest served) must agree: numeric versions compare as numbers (TF Serving's are
    integers); others after them, by text."""
    return (0, int(version)) if version.isdigit() else (1, version)
