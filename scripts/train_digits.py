"""Train the demo model: a small CNN on scikit-learn's bundled digits (no download possible).

Each 8x8 digit is rendered as a 64x64 dark-on-white PNG, then run through the service's own
decoder, so training sees exactly what serving sees. Writes a release directory and a few
held-out sample images. Same seed, same weights, same accuracy.

    python scripts/train_digits.py --version 1
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "app"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from inference.preprocess import decode_image  # noqa: E402
from inference.release import MODEL_FILE, InputSpec, write_release_metadata  # noqa: E402

SPEC = InputSpec(height=32, width=32, color_mode="rgb", scale=1 / 255, offset=0.0)
SAMPLE_SIZE = 64


def render(digit: np.ndarray) -> bytes:
    """An 8x8 array of 0..16 ink to a 64x64 RGB PNG, dark ink on white."""
    pixels = (255 - digit / 16.0 * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels, "L").resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.BILINEAR).convert("RGB")
    out = io.BytesIO()
    img.save(out, "PNG", optimize=True)
    return out.getvalue()


def build_model(keras: ModuleType) -> object:
    return keras.Sequential(
        [
            keras.Input(shape=SPEC.shape, name="input"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(10, activation="softmax", name="output"),
        ],
        name="digits_cnn",
    )


def weights_digest(model: object) -> str:
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--out", type=Path, default=ROOT / "files" / "models" / "digits")
    parser.add_argument("--samples", type=Path, default=ROOT / "files" / "samples" / "digits")
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    digits = load_digits()
    encoded = [render(d) for d in digits.images]
    x = np.stack([decode_image(png, SPEC, max_pixels=1 << 20) for png in encoded])
    y = digits.target
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=args.seed)

    model = build_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[idx_train], y[idx_train], epochs=args.epochs, batch_size=32, shuffle=True, verbose=0)
    probs = model.predict(x[idx_test], verbose=0)
    predicted = probs.argmax(axis=1)
    accuracy = float((predicted == y[idx_test]).mean())
    errors = int((predicted != y[idx_test]).sum())

    release_dir = args.out / args.version
    release_dir.mkdir(parents=True, exist_ok=True)
    model.save(release_dir / MODEL_FILE)
    release = write_release_metadata(
        release_dir,
        name="digits",
        version=args.version,
        labels=[str(i) for i in range(10)],
        spec=SPEC,
        top_k=3,
        extra={
            "description": "Small CNN on scikit-learn's digits, rendered as 64x64 dark-on-white images",
            "heldout_accuracy": round(accuracy, 4),
            "heldout_size": len(idx_test),
            "seed": args.seed,
            "epochs": args.epochs,
            "weights_sha256": weights_digest(model),
            "trained_with": {"tensorflow": tf.__version__, "keras": keras.__version__},
        },
    )

    # One held-out sample per class, the first one the model gets right, for tests and the README.
    args.samples.mkdir(parents=True, exist_ok=True)
    for old in args.samples.glob("*.png"):
        old.unlink()
    for label in range(10):
        i = next(i for i in idx_test if y[i] == label and predicted[list(idx_test).index(i)] == label)
        (args.samples / f"{label}.png").write_bytes(encoded[i])

    print(
        json.dumps(
            {
                "release": str(release_dir),
                "heldout_accuracy": accuracy,
                "heldout_errors": errors,
                "heldout_size": len(idx_test),
                "sha256": release.sha256,
                "weights_sha256": release.extra["weights_sha256"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
