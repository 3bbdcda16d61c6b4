"""Train the scikit-learn demo model: a pipeline (standard scaling, logistic regression) on
scikit-learn's bundled wine data, saved with joblib.

Thirteen chemical measurements in, three cultivars' probabilities out. Clients send the features
by name. Loading a joblib file runs code: the sha256 in the metadata, checked on the controller,
on the host and again by the app before joblib reads the file, is the trust anchor, and the
scikit-learn version it was saved with is recorded (the app refuses another minor version, as
scikit-learn does not support unpickling across versions).

    python files/models/train_wine.py --version 1
"""

from __future__ import annotations

import json

import numpy as np
from training import release_args

from inference.frameworks import framework
from inference.release import TensorSpec, write_release_metadata


def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and held-out features and classes (the tests measure the release on the latter)."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    wine = load_wine()
    x = wine.data.astype(np.float32)
    return tuple(train_test_split(x, wine.target, test_size=0.3, stratify=wine.target, random_state=seed))


def main() -> int:
    args = release_args(__doc__, "wine")

    import joblib
    import sklearn
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    wine = load_wine()
    features = tuple(str(n).replace("/", "_") for n in wine.feature_names)
    x_train, x_test, y_train, y_test = split(args.seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.5))
    model.fit(x_train, y_train)
    accuracy = round(float((model.predict(x_test) == y_test).mean()), 4)

    release_dir = args.out / args.version
    release_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, release_dir / framework("sklearn").model_file, compress=3)
    release = write_release_metadata(
        release_dir,
        name="wine",
        version=args.version,
        labels=[str(n) for n in wine.target_names],
        spec=TensorSpec(shape=(len(features),), dtype="float32", features=features),
        top_k=3,
        framework="sklearn",
        extra={
            "description": "scikit-learn pipeline (scaling, logistic regression) on the bundled wine data, joblib",
            "heldout_accuracy": accuracy,
            "heldout_size": len(y_test),
            "seed": args.seed,
            "sklearn_version": sklearn.__version__,
        },
    )
    print(json.dumps({"release": str(release_dir), "heldout_accuracy": accuracy, "sha256": release.sha256}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
