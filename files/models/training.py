"""What the demo models' build scripts share: their command line, a seeded single-threaded Keras,
the digest of the weights a run produced, and saving a trained Keras model as a release.
Imported by the scripts beside it, which sit beside the models they build (Python puts a
script's own folder first on its path)."""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from types import ModuleType

import numpy as np

MODELS = Path(__file__).resolve().parent


def release_args(doc: str, name: str, epochs: int | None = None) -> argparse.Namespace:
    """--version, --seed, --out (default files/models/<name>) and, for a trained network, --epochs."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--version", default="1")
    parser.add_argument("--seed", type=int, default=1234)
    if epochs is not None:
        parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--out", type=Path, default=MODELS / name)
    return parser.parse_args()


def seeded_keras(seed: int) -> tuple[ModuleType, ModuleType]:
    """Keras and TensorFlow, seeded, one thread each way: the same run gives the same weights on
    the same CPU and TensorFlow build (not across them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return keras, tf


def weights_sha256(model: object) -> str:
    """Names the weights a release holds (metadata's weights_sha256)."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def save_keras_release(model: object, args: argparse.Namespace, *, weights_digest: bool = True, **metadata: object):
    """The trained model saved as release args.out/args.version with its metadata.json: ``metadata``
    is write_release_metadata's (name, labels, spec, top_k, extra); the seed, epochs, the weights'
    digest and the TensorFlow and Keras it was trained with join its extra. Returns the folder and
    the release."""
    import keras
    import tensorflow as tf

    from inference.release import MODEL_FILE, write_release_metadata

    release_dir = args.out / args.version
    release_dir.mkdir(parents=True, exist_ok=True)
    model.save(release_dir / MODEL_FILE)
    extra = {**metadata.pop("extra", {}), "seed": args.seed, "epochs": args.epochs}
    if weights_digest:
        extra["weights_sha256"] = weights_sha256(model)
    extra["trained_with"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
    return release_dir, write_release_metadata(release_dir, version=args.version, extra=extra, **metadata)
