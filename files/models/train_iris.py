"""Train the tabular demo model: a small Keras MLP on scikit-learn's bundled iris data.

Four measurements in centimetres in, three species' probabilities out. The scaling lives inside
the model (a Normalization layer adapted on the training split), so clients send raw
measurements, by position or by feature name. Held-out accuracy goes into the metadata; like the
digits model, the weights differ from one CPU to another, the split does not.

    python files/models/train_iris.py --version 1
"""

from __future__ import annotations

import json

import numpy as np
from training import release_args, save_keras_release, seeded_keras

from inference.release import TensorSpec

FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
SPEC = TensorSpec(shape=(len(FEATURES),), dtype="float32", features=FEATURES)


def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    x = iris.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, iris.target, test_size=0.3, stratify=iris.target, random_state=seed
    )
    return x_train, x_test, y_train, y_test, [str(n) for n in iris.target_names]


def main() -> int:
    args = release_args(__doc__, "iris", epochs=150)

    keras, _tf = seeded_keras(args.seed)

    x_train, x_test, y_train, y_test, labels = split(args.seed)
    norm = keras.layers.Normalization(name="scale")
    norm.adapt(x_train)
    model = keras.Sequential(
        [
            keras.Input(shape=SPEC.shape, name="features"),
            norm,
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(len(labels), activation="softmax", name="species"),
        ],
        name="iris_mlp",
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=16, verbose=0)
    accuracy = round(float((model.predict(x_test, verbose=0).argmax(axis=1) == y_test).mean()), 4)

    release_dir, release = save_keras_release(
        model,
        args,
        name="iris",
        labels=labels,
        spec=SPEC,
        top_k=3,
        extra={
            "description": "Keras MLP on scikit-learn's iris measurements (cm), scaling inside the model",
            "heldout_accuracy": accuracy,
            "heldout_size": len(y_test),
        },
    )
    print(json.dumps({"release": str(release_dir), "heldout_accuracy": accuracy, "sha256": release.sha256}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
