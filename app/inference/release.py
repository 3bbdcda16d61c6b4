"""A model release on disk: the model file, ``labels.json`` and ``metadata.json``.

The metadata records which framework saved the model (``framework``, one of frameworks.py's
table, which names its model file: ``keras``, the default, in ``model.keras``; ``sklearn``, an
estimator saved with joblib in ``model.joblib``; ``onnx``, e.g. a PyTorch export, in
``model.onnx``; ``litert``, a Keras model converted for CPU hosts at release time, in
``model.tflite``), what the model takes and how inputs must be prepared, and the sha256 of the
model file and of any other file it lists (``files``), checked before the model is ever
deserialised. Transformations made at release time (``folding``: batch norms folded, see
release_tools.py) are recorded too; the model file the sha256 names is the transformed one, served
as it is. Three kinds of input:

- ``image`` (the default): an encoded image, decoded to ``height x width x channels`` (or
  ``channels x height x width`` with ``"layout": "NCHW"``, as PyTorch models take it) and scaled;
- ``tensor``: numbers of a fixed ``shape`` per instance (tabular features, raw tensors), with
  optional ``features`` naming the entries of a 1-D input so clients may send them by name;
- ``text``: one string per instance, for models whose preprocessing (``TextVectorization``) is
  inside the model. ``lowercase`` and ``sequence_length`` say how the model splits it into
  tokens (on whitespace), so that a tagger's per-token outputs can be named by token.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .frameworks import DEFAULT, FRAMEWORKS, check_files
from .frameworks import framework as framework_named

MODEL_FILE = FRAMEWORKS[DEFAULT].model_file
LABELS_FILE = "labels.json"
RELEASE_FILE = "release.json"
METADATA_FILE = "metadata.json"
COLOR_MODES = {"rgb": 3, "grayscale": 1}


class ReleaseError(Exception):
    """The release directory is incomplete, inconsistent or tampered with."""


@dataclass(frozen=True)
class InputSpec:
    """An image input."""

    kind = "image"
    height: int
    width: int
    color_mode: str = "rgb"
    # model_input = pixel * scale + offset, pixel being 0..255
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    # Transparent pixels are composited onto this colour before conversion.
    background: tuple[int, int, int] = (255, 255, 255)
    # NHWC (Keras) or NCHW (PyTorch): where the channels go
    layout: str = "NHWC"

    @property
    def channels(self) -> int:
        return COLOR_MODES[self.color_mode]

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.layout == "NCHW":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class TensorSpec:
    """A numeric input of a fixed shape per instance."""

    kind = "tensor"
    shape: tuple[int, ...]
    dtype: str = "float32"
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextSpec:
    """One string per instance; the model tokenizes it itself."""

    kind = "text"
    # How the model's TextVectorization splits text: on whitespace, lowercased or not, into at
    # most sequence_length tokens (0: no per-token outputs).
    lowercase: bool = True
    sequence_length: int = 0
    # The longest text accepted, in characters.
    max_chars: int = 10000
    shape: tuple[int, ...] = ()
    dtype: str = "string"

    def tokens(self, text: str) -> list[str]:
        words = (text.lower() if self.lowercase else text).split()
        return words[: self.sequence_length] if self.sequence_length else words


DTYPES = {"float32", "float64", "int32", "int64"}
Spec = InputSpec | TensorSpec | TextSpec


def read_input_spec(raw: dict) -> Spec:
    kind = raw.get("kind", "image")
    fields_ = {k: v for k, v in raw.items() if k != "kind"}
    if kind == "text":
        text = TextSpec(
            lowercase=bool(fields_.get("lowercase", True)),
            sequence_length=int(fields_.get("sequence_length", 0)),
            max_chars=int(fields_.get("max_chars", 10000)),
        )
        if text.sequence_length < 0 or text.max_chars < 1:
            raise ReleaseError("text input needs a sequence_length of 0 or more and a positive max_chars")
        return text
    if kind == "tensor":
        spec = TensorSpec(
            shape=tuple(int(d) for d in fields_["shape"]),
            dtype=str(fields_.get("dtype", "float32")),
            features=tuple(str(f) for f in fields_.get("features", ())),
        )
        if spec.dtype not in DTYPES or not spec.shape or min(spec.shape) < 1:
            raise ReleaseError(f"tensor input needs a shape of positive sizes and a dtype in {sorted(DTYPES)}")
        if spec.features and (len(spec.shape) != 1 or len(spec.features) != spec.shape[0]):
            raise ReleaseError("features name the entries of a 1-D input: one name per entry")
        return spec
    if kind != "image":
        raise ReleaseError(f"unknown input kind {kind!r}")
    spec = InputSpec(**{**fields_, "background": tuple(fields_.get("background", (255, 255, 255)))})
    if spec.color_mode not in COLOR_MODES:
        raise ReleaseError(f"unknown color_mode {spec.color_mode!r}")
    if spec.layout not in ("NHWC", "NCHW"):
        raise ReleaseError(f"unknown layout {spec.layout!r}: NHWC or NCHW")
    return spec


def describe_input(spec: Spec) -> dict:
    return {"kind": spec.kind, **asdict(spec), "shape": list(spec.shape)}


def spec_fields(spec: Spec) -> dict:
    """What metadata.json stores for an input."""
    stored = asdict(spec)
    if spec.kind == "text":
        stored.pop("shape")
        stored.pop("dtype")
    if spec.kind == "image" and spec.layout == "NHWC":
        stored.pop("layout")  # the default; releases cut before layouts existed read the same
    return {**({"kind": spec.kind} if spec.kind != "image" else {}), **stored}


@dataclass(frozen=True)
class Release:
    path: Path
    name: str
    version: str
    labels: tuple[str, ...]
    input: Spec
    sha256: str
    top_k: int = 3
    framework: str = DEFAULT
    # other files of the release (name -> sha256), checked like the model file
    files: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def model_file(self) -> Path:
        return self.path / framework_named(self.framework).model_file

    @property
    def task(self) -> str:
        """classification (labels), segmentation, tagging, or regression (raw named outputs)."""
        return str(self.extra.get("task") or ("classification" if self.labels else "regression"))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "framework": self.framework,
            "task": self.task,
            "labels": list(self.labels),
            "input": describe_input(self.input),
            "sha256": self.sha256,
            "files": dict(self.files),
            "top_k": self.top_k,
            **{k: v for k, v in self.extra.items() if k != "task"},
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_release(path: str | Path, verify: bool = True) -> Release:
    root = Path(path)
    try:
        meta = json.loads((root / METADATA_FILE).read_text())
        labels = json.loads((root / LABELS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"cannot read release at {root}: {exc}") from exc
    try:
        spec = read_input_spec(meta["input"])
        known = {"name", "version", "input", "sha256", "top_k", "framework", "model_file", "files"}
        release = Release(
            path=root,
            name=str(meta["name"]),
            version=str(meta["version"]),
            labels=tuple(str(label) for label in labels),
            input=spec,
            sha256=str(meta["sha256"]),
            top_k=int(meta.get("top_k", 3)),
            framework=str(meta.get("framework", DEFAULT)),
            files={str(k): str(v) for k, v in dict(meta.get("files") or {}).items()},
            extra={k: v for k, v in meta.items() if k not in known},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ReleaseError(f"malformed metadata in {root}: {exc}") from exc
    if any("/" in name or name.startswith(".") for name in release.files):
        raise ReleaseError(f"files in {root} must be plain names in the release folder")
    try:
        check_files(release.framework, release.files)
    except ValueError as exc:  # UnknownFramework among them: refused by name
        raise ReleaseError(f"{root}: {exc}") from exc
    if verify:
        checked = [(release.model_file, release.sha256)]
        checked += [(root / name, digest) for name, digest in sorted(release.files.items())]
        for file, expected in checked:
            if not file.is_file():
                raise ReleaseError(f"{file} is missing")
            actual = file_sha256(file)
            if actual != expected:
                raise ReleaseError(f"sha256 mismatch for {file}: metadata {expected}, file {actual}")
    return release


def read_release_id(model_dir: str | Path) -> str | None:
    """The deployment's release id: ``release.json`` in the folder holding the (resolved) model folder.

    The app_release role writes it; a model folder used outside a deployment has none.
    """
    marker = Path(model_dir).resolve().parent / RELEASE_FILE
    try:
        return str(json.loads(marker.read_text())["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_release_metadata(
    root: Path,
    *,
    name: str,
    version: str,
    labels: list[str],
    spec: Spec,
    top_k: int,
    extra: dict,
    framework: str = DEFAULT,
    files: tuple[str, ...] = (),
) -> Release:
    """Write labels and metadata beside an existing model file (and the ``files`` beside it);
    returns the verified release."""
    (root / LABELS_FILE).write_text(json.dumps(labels) + "\n")
    meta = {
        "name": name,
        "version": version,
        "framework": framework,
        "input": spec_fields(spec),
        "top_k": top_k,
        "sha256": file_sha256(root / framework_named(framework).model_file),
        **({"files": {f: file_sha256(root / f) for f in files}} if files else {}),
        **extra,
    }
    (root / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return read_release(root)
