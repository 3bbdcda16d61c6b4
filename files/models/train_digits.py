"""Train the demo model: a small CNN on scikit-learn's bundled digits (no download possible).

Each 8x8 digit is rendered as a 64x64 PNG in both polarities (dark ink on white, as a scan or a
drawing; light ink on black, as MNIST-style images), then run through the service's own
decoder, so training sees exactly what serving sees. Writes a release directory and held-out
sample images of each polarity.

What holds on any machine: the split and the sample images (integers and PNG bytes, no floats),
and held-out accuracy within a band (tests/README: >= 0.97 for each polarity). What does not:
the weights. TensorFlow's CPU kernels differ by instruction set and thread schedule, so the same
seed gives other weights (and a slightly different accuracy) on another CPU; `weights_sha256`
in the metadata names the weights this release holds, nothing more.

    python files/models/train_digits.py --version 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image
from training import weights_sha256

from inference.preprocess import decode_image
from inference.release import MODEL_FILE, InputSpec, write_release_metadata

ROOT = Path(__file__).resolve().parents[2]
# Before TensorFlow is imported (in main).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SPEC = InputSpec(height=32, width=32, color_mode="rgb", scale=1 / 255, offset=0.0)
SAMPLE_SIZE = 64


POLARITIES = ("dark_on_light", "light_on_dark")


def render(digit: np.ndarray, polarity: str = "dark_on_light") -> bytes:
    """An 8x8 array of 0..16 ink to a 64x64 RGB PNG, in the given polarity."""
    ink = (digit / 16.0 * 255).round().astype(np.uint8)
    pixels = ink if polarity == "light_on_dark" else 255 - ink
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


def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, list[bytes]]]:
    """Labels, train and held-out indices, and every digit encoded in each polarity (no floats)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    y = digits.target
    encoded = {p: [render(d, p) for d in digits.images] for p in POLARITIES}
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
    return y, idx_train, idx_test, encoded


def write_samples(folder: Path, encoded: list[bytes], y: np.ndarray, idx_test: np.ndarray) -> None:
    """One held-out image per class: the first of the split, whatever the model says of it."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for label in range(10):
        first = next(int(i) for i in idx_test if y[i] == label)
        (folder / f"{label}.png").write_bytes(encoded[first])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra-op threads (changes the floats)")
    parser.add_argument("--out", type=Path, default=ROOT / "files" / "models" / "digits")
    parser.add_argument("--samples", type=Path, default=ROOT / "files" / "samples" / "digits")
    parser.add_argument(
        "--inverted-samples", type=Path, default=ROOT / "files" / "samples" / "digits-inverted", help="light on dark"
    )
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    y, idx_train, idx_test, encoded = split(args.seed)
    x = {p: np.stack([decode_image(png, SPEC, 1 << 20) for png in encoded[p]]) for p in POLARITIES}

    model = build_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x_train = np.concatenate([x[p][idx_train] for p in POLARITIES])
    y_train = np.concatenate([y[idx_train] for _ in POLARITIES])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, shuffle=True, verbose=0)

    by_polarity: dict[str, float] = {}
    errors = 0
    for p in POLARITIES:
        predicted = model.predict(x[p][idx_test], verbose=0).argmax(axis=1)
        by_polarity[p] = round(float((predicted == y[idx_test]).mean()), 4)
        errors += int((predicted != y[idx_test]).sum())
    accuracy = round(1 - errors / (len(idx_test) * len(POLARITIES)), 4)

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
            "description": "Small CNN on scikit-learn's digits as 64x64 images, dark on light and light on dark",
            "heldout_accuracy": accuracy,
            "heldout_accuracy_by_polarity": by_polarity,
            "heldout_size": len(idx_test),
            "seed": args.seed,
            "epochs": args.epochs,
            "weights_sha256": weights_sha256(model),
            "trained_with": {"tensorflow": tf.__version__, "keras": keras.__version__},
        },
    )

    write_samples(args.samples, encoded["dark_on_light"], y, idx_test)
    write_samples(args.inverted_samples, encoded["light_on_dark"], y, idx_test)

    print(
        json.dumps(
            {
                "release": str(release_dir),
                "heldout_accuracy": accuracy,
                "heldout_accuracy_by_polarity": by_polarity,
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
