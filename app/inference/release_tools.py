"""Release tools: cut a new version of a model release, or convert a Keras release to LiteRT.
Every transformation of a model happens here, at release time, behind a parity gate; hosts serve
the file the release's sha256 names, as it is.

    python -m inference.release_tools cut files/models/digits/1 2      # -> .cache/releases/digits/2
    python -m inference.release_tools cut SRC VERSION --model new.keras --out DIR
    python -m inference.release_tools convert files/models/digits/1 --out .cache/releases/digits-litert/1
    python -m inference.release_tools convert SRC --out DIR --optimize dynamic   # int8 weights

(``funfleet-release cut|convert ...`` once the app is pip-installed; ``make release`` cuts.)

**cut** copies a release folder (its model file, labels.json, metadata.json and any other files
its metadata lists) under a new version, optionally with another model file of the same
framework, and rewrites the metadata's version and sha256. The source is verified first, so a
tampered release is never re-signed. A Keras model's inference-mode batch norms are folded into
the convolution or dense layer before them (folding.py; ``--no-fold`` keeps the model as saved):
the folded model's outputs must match the saved model's on the sample set within the gate below,
else the cut is refused and nothing is written. The metadata records the fold (``folding``: how
many batch norms, the sha256 of the model as saved, the gate's numbers), and its ``sha256`` names
the folded file, so the artefact a host serves is the one that was checked. A release cut before
folding moved here (or with ``--no-fold``) is served as saved: the same outputs, a slower call.

**convert** writes a ``litert`` release (``model.tflite`` run by LiteRT with XNNPACK, no
TensorFlow in the worker) of a Keras release, only if it passes the gate; its Keras outputs go
into ``reference.npz``, which the service checks again when it loads the model. Text models keep
Keras (their string ops are TensorFlow's).

The parity gate: on the sample set, the largest absolute difference over every output at most
``--max-abs-diff``, and for a classifier the top-1 label the same on at least ``--min-top1`` of
the samples. The sample set: ``--samples``, a folder of images for an image model (default: the
release's ``samples/`` folder, else files/samples/<name>) or a JSON file of instances for a
tensor model (default: 64 seeded rows around zero). Folding, which only reorders float
arithmetic, falls back to 16 seeded images where an image model has no samples; a conversion
needs real ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .frameworks import REFERENCE_FILE, framework
from .release import (
    LABELS_FILE,
    METADATA_FILE,
    Release,
    ReleaseError,
    file_sha256,
    read_release,
    write_release_metadata,
)

log = logging.getLogger(__name__)
# The checkout this package sits in (app/inference/..): files/samples/<name> are the demo models' samples.
REPO = Path(__file__).resolve().parents[2]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# What metadata.json holds that write_release_metadata writes itself.
KNOWN = {"name", "version", "input", "sha256", "top_k", "framework", "files"}


@dataclass(frozen=True)
class Gate:
    """The parity gate: the largest absolute difference allowed over every output, and the share
    of samples whose top-1 label must agree (classifiers)."""

    max_abs_diff: float = 1e-4
    min_top1: float = 1.0

    def check(self, expected: list[np.ndarray], got: list[np.ndarray], classifier: bool) -> tuple[dict, bool]:
        numbers = parity(expected, got, classifier)
        ok = numbers["max_abs_diff"] <= self.max_abs_diff and (
            numbers["top1_agreement"] is None or numbers["top1_agreement"] >= self.min_top1
        )
        return numbers, ok

    def summary(self, numbers: dict, samples: int, where: str) -> str:
        return (
            f"max abs diff {numbers['max_abs_diff']:.3g} (at most {self.max_abs_diff:g}), top-1 agreement "
            f"{numbers['top1_agreement']} (at least {self.min_top1:g}) on {samples} samples ({where})"
        )

    def record(self, numbers: dict, samples: int) -> dict:
        return {
            **numbers,
            "samples": samples,
            "max_abs_diff_allowed": self.max_abs_diff,
            "min_top1_allowed": self.min_top1,
        }


def parity(expected: list[np.ndarray], got: list[np.ndarray], classifier: bool) -> dict:
    if len(expected) != len(got) or any(e.shape != g.shape for e, g in zip(expected, got, strict=True)):
        return {"max_abs_diff": float("inf"), "top1_agreement": 0.0 if classifier else None}
    diff = max(float(np.max(np.abs(e.astype(np.float64) - g))) for e, g in zip(expected, got, strict=True))
    top1 = None
    if classifier:
        e, g = expected[0].reshape(len(expected[0]), -1), got[0].reshape(len(got[0]), -1)
        top1 = float(np.mean(e.argmax(axis=1) == g.argmax(axis=1)))
    return {"max_abs_diff": diff, "top1_agreement": top1}


def sample_set(release: Release, samples: Path | None, seeded_images: int = 0) -> tuple[np.ndarray, str]:
    """The inputs the gate compares outputs on, and where they came from. ``seeded_images``: how
    many seeded random images stand in when an image model has no samples (0: refuse)."""
    from .preprocess import decode_image

    spec = release.input
    if spec.kind == "image":
        folder = samples or next(
            (p for p in (release.path / "samples", REPO / "files" / "samples" / release.name) if p.is_dir()), None
        )
        files = sorted(p for p in (folder.iterdir() if folder else []) if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return np.stack([decode_image(p.read_bytes(), spec, 1 << 26) for p in files]), str(folder)
        if not seeded_images:
            raise ReleaseError(f"no sample images for {release.name}: pass --samples DIR")
        pixels = np.random.default_rng(0).uniform(0, 255, (seeded_images, *spec.shape))
        return (pixels * spec.scale + spec.offset).astype(np.float32), f"{seeded_images} seeded images"
    if samples is not None:
        return np.asarray(json.loads(samples.read_text()), dtype=np.float32), str(samples)
    rows = np.random.default_rng(0).normal(size=(64, *spec.shape)).astype(np.float32)
    return rows, "64 seeded normal rows"


def _keras() -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    return keras, tf


def _outputs(tf: Any, model: Any, x: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(t) for t in tf.nest.flatten(model(x, training=False))]


def _may_fold(model_file: Path) -> bool:
    """Whether a .keras file holds a batch norm at all (its config.json), read without TensorFlow:
    most cuts (the demo models, a version bump) then never import it."""
    try:
        with zipfile.ZipFile(model_file) as archive:
            return b'"BatchNormalization"' in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return True  # not a .keras zip as expected: let Keras read it and say


def fold(source: Release, model_file: Path, out_file: Path, gate: Gate, samples: Path | None = None) -> dict | None:
    """Fold ``model_file``'s batch norms (a model of ``source``'s kind) into ``out_file``, if its
    outputs pass the gate; returns the ``folding`` record for the metadata, or None when there is
    nothing to fold (``out_file`` not written). Raises ReleaseError, writing nothing, when the
    folded model fails the gate."""
    from .folding import plan_folding

    if source.input.kind == "text" or not _may_fold(model_file):
        return None
    keras, tf = _keras()
    model = keras.saving.load_model(model_file, compile=False)
    if str(model.inputs[0].dtype) not in ("float32", "float64", "float16"):
        return None
    try:
        folding = plan_folding(model)
    except Exception as exc:  # a model Keras cannot rebuild from its config is released as saved
        log.warning("%s: batch norms not folded: %s: %s", source.name, type(exc).__name__, exc)
        return None
    if folding is None:
        return None
    x, where = sample_set(source, samples, seeded_images=16)
    x = x.astype(str(model.inputs[0].dtype))
    expected = _outputs(tf, model, x)
    folded = folding.build()
    numbers, ok = gate.check(expected, _outputs(tf, folded, x), classifier=bool(source.labels))
    summary = gate.summary(numbers, len(x), where)
    if not ok:
        raise ReleaseError(
            f"folding {folding.count} batch norms of {source.name} fails the parity gate: {summary};"
            " --no-fold releases the model as saved"
        )
    folded.save(out_file)
    log.info("%s: %d batch norms folded: %s", source.name, folding.count, summary)
    return {
        "batch_norms": folding.count,
        "from_sha256": file_sha256(model_file),
        "tool": f"inference.folding, keras {keras.__version__}",
        "parity": gate.record(numbers, len(x)),
    }


def cut(
    source_dir: Path,
    version: str,
    *,
    out: Path | None = None,
    model: Path | None = None,
    fold_batch_norms: bool = True,
    gate: Gate | None = None,
    samples: Path | None = None,
) -> Release:
    """A new version of a release (see the module's doc); returns it, verified."""
    gate = gate or Gate()
    source = read_release(source_dir)
    out = out or Path(".cache") / "releases" / source.name / version
    if out.exists():
        raise ReleaseError(f"{out} exists; pick another version or --out")
    model_name = framework(source.framework).model_file
    model_file = model or source.model_file
    meta = json.loads((source_dir / METADATA_FILE).read_text())
    extra = {k: v for k, v in meta.items() if k not in KNOWN}
    if model is not None:
        extra.pop("folding", None)  # the record was the source's model file's
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / model_name
        folding = None
        if fold_batch_norms and source.framework == "keras":
            folding = fold(source, model_file, staged, gate, samples)
        out.mkdir(parents=True)
        if folding is not None:
            shutil.move(staged, out / model_name)
            extra["folding"] = folding
        else:
            shutil.copyfile(model_file, out / model_name)
    for name in source.files:
        shutil.copyfile(source_dir / name, out / name)
    return write_release_metadata(
        out,
        name=source.name,
        version=version,
        labels=json.loads((source_dir / LABELS_FILE).read_text()),
        spec=source.input,
        top_k=source.top_k,
        framework=source.framework,
        files=tuple(source.files),
        extra={**extra, "cut_from": f"{source.name}:{source.version}"},
    )


def convert(
    source_dir: Path,
    out: Path,
    *,
    version: str | None = None,
    optimize: str = "none",
    gate: Gate | None = None,
    samples: Path | None = None,
) -> tuple[Release, str]:
    """The Keras release at ``source_dir`` converted to LiteRT in ``out``, and the gate's summary."""
    from .backends import keras_signature

    gate = gate or Gate()
    source = read_release(source_dir)
    if source.framework != "keras" or source.input.kind == "text":
        kind = f"{source.framework} {source.input.kind}"
        raise ReleaseError(f"only Keras image and tensor models convert; this is {kind}")
    if out.exists():
        raise ReleaseError(f"{out} exists")
    x, where = sample_set(source, samples)
    keras, tf = _keras()
    from ai_edge_litert.interpreter import Interpreter

    model = keras.saving.load_model(source.model_file, compile=False)
    expected = _outputs(tf, model, x)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if optimize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(flatbuffer)
        runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner()
        outputs = runner(**{next(iter(runner.get_input_details())): x})
    got = [outputs[n] for n in sorted(outputs, key=lambda n: (len(n), n))]
    numbers, ok = gate.check(expected, got, classifier=bool(source.labels))
    summary = gate.summary(numbers, len(x), where)
    if not ok:
        raise ReleaseError(f"the LiteRT conversion of {source.name}:{source.version} fails the parity gate: {summary}")
    out.mkdir(parents=True)
    (out / framework("litert").model_file).write_bytes(flatbuffer)
    shutil.copyfile(source_dir / LABELS_FILE, out / LABELS_FILE)
    names = [o.name for o in keras_signature(model).outputs]
    with (out / REFERENCE_FILE).open("wb") as fh:
        np.savez(fh, inputs=x.astype(np.float32), **dict(zip(names, expected, strict=True)))
    meta = json.loads((source_dir / METADATA_FILE).read_text())
    release = write_release_metadata(
        out,
        name=source.name,
        version=version or source.version,
        labels=list(source.labels),
        spec=source.input,
        top_k=source.top_k,
        framework="litert",
        files=(REFERENCE_FILE,),
        extra={
            **{k: v for k, v in meta.items() if k not in KNOWN},
            "output_names": names,
            "converted_from": {"framework": "keras", "version": source.version, "sha256": source.sha256},
            "conversion": {"tool": f"tensorflow {tf.__version__} TFLiteConverter", "optimize": optimize},
            "parity": gate.record(numbers, len(x)),
            # The service checks the stored Keras outputs again at load, within the gate's bound.
            "reference_tolerance": {"atol": max(gate.max_abs_diff, 1e-6) * 2, "rtol": 0.0},
        },
    )
    return release, summary


def _gate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=Path, help="sample images (folder) or instances (JSON file) for the gate")
    parser.add_argument("--max-abs-diff", type=float, default=Gate.max_abs_diff)
    parser.add_argument("--min-top1", type=float, default=Gate.min_top1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="funfleet-release", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cut_cmd = commands.add_parser("cut", help="a new version of a release (Keras: batch norms folded, gated)")
    cut_cmd.add_argument("source", type=Path, help="a release folder")
    cut_cmd.add_argument("version", help="the new version (TF Serving's /versions/<v>)")
    cut_cmd.add_argument("--model", type=Path, help="a new model file of the same framework (default: the source's)")
    cut_cmd.add_argument("--out", type=Path, help="target folder (default .cache/releases/<name>/<version>)")
    cut_cmd.add_argument("--no-fold", action="store_true", help="keep a Keras model's batch norms as saved")
    _gate_options(cut_cmd)
    convert_cmd = commands.add_parser("convert", help="a Keras release converted to LiteRT for CPU hosts, gated")
    convert_cmd.add_argument("source", type=Path, help="a Keras model release folder")
    convert_cmd.add_argument("--out", type=Path, required=True, help="the converted release folder (must not exist)")
    convert_cmd.add_argument("--version", help="its version (default: the source's)")
    convert_cmd.add_argument("--optimize", choices=("none", "dynamic"), default="none", help="dynamic: int8 weights")
    _gate_options(convert_cmd)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{args.command}: %(message)s")
    gate = Gate(args.max_abs_diff, args.min_top1)
    try:
        if args.command == "cut":
            release = cut(
                args.source,
                args.version,
                out=args.out,
                model=args.model,
                fold_batch_norms=not args.no_fold,
                gate=gate,
                samples=args.samples,
            )
            print(f"{release.path}  ({release.name} version {release.version}, sha256 {release.sha256[:12]})")
        else:
            release, summary = convert(
                args.source, args.out, version=args.version, optimize=args.optimize, gate=gate, samples=args.samples
            )
            print(f"{release.path}  ({release.name} version {release.version}, litert, {summary})")
    except ReleaseError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
