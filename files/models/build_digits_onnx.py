"""Build the ONNX demo model: a small MLP on scikit-learn's bundled digits, written as an ONNX
graph with the exporter's reference outputs beside it, as a PyTorch export is handed over.

PyTorch itself cannot be installed here (PyPI's Linux wheel is the CUDA build: 539 MB, and it does
not import without the CUDA libraries), so the network is trained with scikit-learn and written
with ``onnx.helper`` in the shape ``torch.onnx.export`` gives: NCHW input named ``input`` with a
dynamic batch dimension, opset 17. ``reference.npz`` holds held-out inputs and the trainer's own
outputs for them (``predict_proba``); the service refuses the release if ONNX Runtime disagrees.
Served through the same image decoder as the Keras digits model (16x16 grayscale, NCHW).

    python files/models/build_digits_onnx.py --version 1
"""

from __future__ import annotations

import json

import numpy as np
from train_digits import POLARITIES, split  # the Keras digits model's split and images
from training import release_args

from inference.frameworks import REFERENCE_FILE, framework
from inference.preprocess import decode_image
from inference.release import InputSpec, write_release_metadata

SPEC = InputSpec(height=16, width=16, color_mode="grayscale", scale=1 / 255, offset=0.0, layout="NCHW")
OPSET = 17


def to_onnx(coefs: list[np.ndarray], intercepts: list[np.ndarray]) -> bytes:
    """The MLP as an ONNX graph: Flatten, then Gemm and Relu per hidden layer, Gemm and Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Flatten", ["input"], ["x0"], axis=1)]
    weights = []
    last = len(coefs) - 1
    for i, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
        weights += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        out = f"z{i}" if i < last else "logits"
        nodes.append(helper.make_node("Gemm", [f"x{i}", f"w{i}", f"b{i}"], [out]))
        if i < last:
            nodes.append(helper.make_node("Relu", [out], [f"x{i + 1}"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *SPEC.shape])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", coefs[-1].shape[1]])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="funfleet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and held-out images (decoded as served, NCHW) and digits: the digits model's split,
    both polarities, held-out dark on light first."""
    y, idx_train, idx_test, encoded = split(seed)
    x = {p: np.stack([decode_image(png, SPEC, 1 << 20) for png in encoded[p]]) for p in POLARITIES}
    return (
        np.concatenate([x[p][idx_train] for p in POLARITIES]),
        np.concatenate([y[idx_train] for _ in POLARITIES]),
        np.concatenate([x[p][idx_test] for p in POLARITIES]),
        np.concatenate([y[idx_test] for _ in POLARITIES]),
    )


def main() -> int:
    args = release_args(__doc__, "digits-onnx")

    from sklearn.neural_network import MLPClassifier

    x_train, y_train, x_test, y_test = arrays(args.seed)
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=args.seed)
    mlp.fit(x_train.reshape(len(x_train), -1), y_train)
    accuracy = round(float((mlp.predict(x_test.reshape(len(x_test), -1)) == y_test).mean()), 4)

    release_dir = args.out / args.version
    release_dir.mkdir(parents=True, exist_ok=True)
    (release_dir / framework("onnx").model_file).write_bytes(to_onnx(mlp.coefs_, mlp.intercepts_))
    # The exporter's reference: the first 32 held-out images (both polarities) and its outputs.
    half = len(x_test) // len(POLARITIES)
    sample = x_test[np.r_[0:16, half : half + 16]]
    reference = mlp.predict_proba(sample.reshape(len(sample), -1)).astype(np.float32)
    with (release_dir / REFERENCE_FILE).open("wb") as fh:
        np.savez(fh, inputs=sample.astype(np.float32), probabilities=reference)
    release = write_release_metadata(
        release_dir,
        name="digits-onnx",
        version=args.version,
        labels=[str(i) for i in range(10)],
        spec=SPEC,
        top_k=3,
        framework="onnx",
        files=(REFERENCE_FILE,),
        extra={
            "description": "MLP on scikit-learn's digits (16x16 grayscale, NCHW) as an ONNX graph, opset 17",
            "heldout_accuracy": accuracy,
            "heldout_size": len(y_test),
            "seed": args.seed,
            "reference_tolerance": {"atol": 1e-5, "rtol": 1e-4},
        },
    )
    print(json.dumps({"release": str(release_dir), "heldout_accuracy": accuracy, "sha256": release.sha256}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
