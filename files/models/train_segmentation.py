"""Train the segmentation demo model: a small encoder-decoder that labels every pixel of a
rendered digit with its digit (or background), from scikit-learn's bundled digits.

Inputs are the same 64x64 dark-on-light renderings the digits model serves, decoded by the
service's own decoder to 32x32 grayscale; the target of a pixel is 0 (background) where the
decoded ink is under half, else 1 + the digit. Held-out pixel accuracy and mean IoU go into the
metadata. The split and renderings are the same on any machine; the weights are not.

    python files/models/train_segmentation.py --version 1
"""

from __future__ import annotations

import json
from types import ModuleType

import numpy as np
from train_digits import split
from training import release_args, save_keras_release, seeded_keras

from inference.preprocess import decode_image
from inference.release import InputSpec

SPEC = InputSpec(height=32, width=32, color_mode="grayscale", scale=1 / 255, offset=0.0)
LABELS = ["background", *[str(i) for i in range(10)]]


def masks(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel targets: 0 where there is no ink (dark on light: ink is value < 0.5), else 1 + digit."""
    ink = x[..., 0] < 0.5
    return np.where(ink, (y + 1)[:, None, None], 0).astype(np.int32)


def build_model(keras: ModuleType) -> object:
    inputs = keras.Input(shape=SPEC.shape, name="image")
    a = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    b = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(keras.layers.MaxPooling2D()(a))
    c = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(keras.layers.MaxPooling2D()(b))
    up = keras.layers.UpSampling2D()(c)
    d = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(keras.layers.Concatenate()([up, b]))
    up = keras.layers.UpSampling2D()(d)
    e = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(keras.layers.Concatenate()([up, a]))
    outputs = keras.layers.Conv2D(len(LABELS), 1, activation="softmax", name="class_map")(e)
    return keras.Model(inputs, outputs, name="digits_segmentation")


def mean_iou(truth: np.ndarray, predicted: np.ndarray) -> float:
    ious = []
    for k in range(len(LABELS)):
        union = np.logical_or(truth == k, predicted == k).sum()
        if union:
            ious.append(np.logical_and(truth == k, predicted == k).sum() / union)
    return float(np.mean(ious))


def arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every digit decoded as served (dark on light), its per-pixel target, and the digits model's
    train and held-out indices (the tests measure the release on the latter)."""
    y, idx_train, idx_test, encoded = split(seed)
    x = np.stack([decode_image(png, SPEC, 1 << 20) for png in encoded["dark_on_light"]])
    return x, masks(x, y), idx_train, idx_test


def main() -> int:
    args = release_args(__doc__, "digit-segments", epochs=25)

    keras, _tf = seeded_keras(args.seed)

    x, target, idx_train, idx_test = arrays(args.seed)
    model = build_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[idx_train], target[idx_train], epochs=args.epochs, batch_size=32, verbose=0)
    predicted = model.predict(x[idx_test], verbose=0).argmax(axis=-1)
    pixel_accuracy = round(float((predicted == target[idx_test]).mean()), 4)
    iou = round(mean_iou(target[idx_test], predicted), 4)

    release_dir, _ = save_keras_release(
        model,
        args,
        weights_digest=False,
        name="digit-segments",
        labels=LABELS,
        spec=SPEC,
        top_k=3,
        extra={
            "task": "segmentation",
            "description": "Per-pixel digit labels (0 background, 1 + digit on ink) on scikit-learn's digits",
            "heldout_pixel_accuracy": pixel_accuracy,
            "heldout_mean_iou": iou,
            "heldout_size": len(idx_test),
        },
    )
    print(json.dumps({"release": str(release_dir), "pixel_accuracy": pixel_accuracy, "mean_iou": iou}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
