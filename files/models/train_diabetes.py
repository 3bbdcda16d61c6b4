"""Train the regression demo model: a Keras model with two named outputs on scikit-learn's
bundled diabetes data.

Ten baseline measurements (age, sex, BMI, blood pressure and six blood serum values, raw units)
in; out, ``progression`` (a quantitative measure of disease progression one year later, a
regression) and ``high_risk`` (the probability that it is above the training median). No labels:
the service returns both outputs by name. Scaling lives inside the model. Held-out mean absolute
error, R² and the risk head's accuracy go into the metadata.

    python files/models/train_diabetes.py --version 1
"""

from __future__ import annotations

import json

import numpy as np
from training import release_args, save_keras_release, seeded_keras

from inference.release import TensorSpec

FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and held-out features and targets (the tests measure the release on the latter)."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes(scaled=False)
    x = data.data.astype(np.float32)
    y = data.target.astype(np.float32)
    return tuple(train_test_split(x, y, test_size=0.25, random_state=seed))


def r2(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())


def main() -> int:
    args = release_args(__doc__, "diabetes", epochs=60)

    keras, _tf = seeded_keras(args.seed)

    x_train, x_test, y_train, y_test = split(args.seed)
    median = float(np.median(y_train))
    mean, std = float(y_train.mean()), float(y_train.std())

    norm = keras.layers.Normalization(name="scale")
    norm.adapt(x_train)
    inputs = keras.Input(shape=(len(FEATURES),), name="features")
    hidden = keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-2))(norm(inputs))
    scaled = keras.layers.Dense(1, name="progression_scaled")(hidden)
    progression = keras.layers.Rescaling(std, offset=mean, name="progression")(scaled)
    high_risk = keras.layers.Dense(1, activation="sigmoid", name="high_risk")(hidden)
    model = keras.Model(inputs, [progression, high_risk], name="diabetes_mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss={"progression": "mse", "high_risk": "binary_crossentropy"},
        loss_weights={"progression": 1.0 / std**2, "high_risk": 1.0},
    )
    targets = {"progression": y_train, "high_risk": (y_train > median).astype(np.float32)}
    model.fit(x_train, targets, epochs=args.epochs, batch_size=32, verbose=0)

    predicted, risk = (p[:, 0] for p in model.predict(x_test, verbose=0))
    mae = round(float(np.abs(predicted - y_test).mean()), 2)
    heldout_r2 = round(r2(predicted, y_test), 4)
    risk_accuracy = round(float(((risk > 0.5) == (y_test > median)).mean()), 4)

    release_dir, release = save_keras_release(
        model,
        args,
        name="diabetes",
        labels=[],
        spec=TensorSpec(shape=(len(FEATURES),), dtype="float32", features=FEATURES),
        top_k=1,
        extra={
            "task": "regression",
            "description": "Keras regression with two named outputs on scikit-learn's diabetes data (raw units)",
            "heldout_mae": mae,
            "heldout_r2": heldout_r2,
            "heldout_high_risk_accuracy": risk_accuracy,
            "high_risk_threshold": median,
            "heldout_size": len(y_test),
        },
    )
    summary = {"release": str(release_dir), "mae": mae, "r2": heldout_r2, "high_risk_accuracy": risk_accuracy}
    print(json.dumps({**summary, "sha256": release.sha256}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
