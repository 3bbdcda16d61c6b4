"""A model release on disk: ``model.keras``, ``labels.json`` and ``metadata.json``.

The metadata records what the model takes and how inputs must be prepared, and the sha256 of
the model file, which is checked before the model is ever deserialised. Two kinds of input:

- ``image`` (the default): an encoded image, decoded to ``height x width x channels`` and scaled;
- ``tensor``: numbers of a fixed ``shape`` per instance (tabular features, raw tensors), with
  optional ``features`` naming the entries of a 1-D input so clients may send them by name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODEL_FILE = "model.keras"
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

    @property
    def channels(self) -> int:
        return COLOR_MODES[self.color_mode]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class TensorSpec:
    """A numeric input of a fixed shape per instance."""

    kind = "tensor"
    shape: tuple[int, ...]
    dtype: str = "float32"
    features: tuple[str, ...] = ()


DTYPES = {"float32", "float64", "int32", "int64"}


def read_input_spec(raw: dict) -> InputSpec | TensorSpec:
    kind = raw.get("kind", "image")
    fields_ = {k: v for k, v in raw.items() if k != "kind"}
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
    return spec


def describe_input(spec: InputSpec | TensorSpec) -> dict:
    return {"kind": spec.kind, **asdict(spec), "shape": list(spec.shape)}


@dataclass(frozen=True)
class Release:
    path: Path
    name: str
    version: str
    labels: tuple[str, ...]
    input: InputSpec | TensorSpec
    sha256: str
    top_k: int = 3
    extra: dict = field(default_factory=dict)

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "labels": list(self.labels),
            "input": describe_input(self.input),
            "sha256": self.sha256,
            "top_k": self.top_k,
            **self.extra,
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
        known = {"name", "version", "input", "sha256", "top_k"}
        release = Release(
            path=root,
            name=str(meta["name"]),
            version=str(meta["version"]),
            labels=tuple(str(label) for label in labels),
            input=spec,
            sha256=str(meta["sha256"]),
            top_k=int(meta.get("top_k", 3)),
            extra={k: v for k, v in meta.items() if k not in known},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ReleaseError(f"malformed metadata in {root}: {exc}") from exc
    if verify:
        if not release.model_file.is_file():
            raise ReleaseError(f"{release.model_file} is missing")
        actual = file_sha256(release.model_file)
        if actual != release.sha256:
            raise ReleaseError(f"sha256 mismatch for {release.model_file}: metadata {release.sha256}, file {actual}")
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
    root: Path, *, name: str, version: str, labels: list[str], spec: InputSpec | TensorSpec, top_k: int, extra: dict
) -> Release:
    """Write labels and metadata beside an existing ``model.keras``; returns the verified release."""
    (root / LABELS_FILE).write_text(json.dumps(labels) + "\n")
    meta = {
        "name": name,
        "version": version,
        "input": {**({"kind": "tensor"} if spec.kind == "tensor" else {}), **asdict(spec)},
        "top_k": top_k,
        "sha256": file_sha256(root / MODEL_FILE),
        **extra,
    }
    (root / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return read_release(root)
