"""Batch norms folded into the layers before them (folding.py): exactly the foldable ones, the
same outputs as the model as saved. Folding happens at release time (release_tools.cut), behind
the parity gate, which refuses a fold that moves the outputs; the metadata records it and names
the folded file; a worker serves the file as it is and never folds, folded or not.

Outputs are compared within tolerances (float32 arithmetic reordered), labels exactly."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from inference import backends, create_app, folding, release_tools
from inference.release import InputSpec, ReleaseError, file_sha256, read_release, write_release_metadata

SIZE = 16
LABELS = [f"class_{i}" for i in range(5)]


def _randomise_batch_norms(model, rng: np.random.Generator) -> None:
    """Trained-looking statistics: a fresh batch norm (mean 0, variance 1) would hide a wrong fold."""
    import keras

    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, channels),
                    rng.normal(0, 0.5, channels),
                    rng.normal(0, 0.5, channels),
                    rng.uniform(0.2, 3.0, channels),
                ]
            )


def _all_layers(model) -> list:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_all_layers(layer))
    return out


def _batch_norm_names(model) -> set[str]:
    import keras

    return {layer.name for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)}


def mixed_model():
    """Every foldable kind and every case that must not be folded, in one functional model."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    block = keras.Sequential(
        [keras.Input((SIZE // 2, SIZE // 2, 8)), layers.Conv2D(8, 3, padding="same"), layers.BatchNormalization()],
        name="nested",
    )
    inp = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv_nobias")(inp)
    x = layers.BatchNormalization(name="bn_conv_nobias")(x)
    x = layers.ReLU(6.0)(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="depthwise")(x)
    x = layers.BatchNormalization(name="bn_depthwise")(x)
    x = layers.Conv2D(8, 1, strides=2, name="conv_bias")(x)
    x = layers.BatchNormalization(axis=3, name="bn_conv_bias")(x)  # the last axis by index, as ResNet50 has it
    x = block(x)
    # Not foldable: the convolution's own activation comes before the batch norm.
    y = layers.Conv2D(8, 1, activation="relu", name="conv_relu")(x)
    y = layers.BatchNormalization(name="bn_after_relu")(y)
    # Not foldable: the convolution's output is also used elsewhere (a residual).
    z = layers.Conv2D(8, 1, name="conv_shared")(y)
    z = layers.Add()([z, layers.BatchNormalization(name="bn_shared")(z)])
    # Not foldable: a batch norm after something that is not a linear layer.
    z = layers.BatchNormalization(name="bn_after_add")(z)
    x = layers.GlobalAveragePooling2D()(z)
    x = layers.Dense(16, name="dense")(x)
    x = layers.BatchNormalization(name="bn_dense")(x)
    out = layers.Dense(len(LABELS), activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out)
    _randomise_batch_norms(model, np.random.default_rng(2))
    return model


FOLDED = {"bn_conv_nobias", "bn_depthwise", "bn_conv_bias", "bn_dense"}
KEPT = {"bn_after_relu", "bn_shared", "bn_after_add"}


def test_folds_exactly_the_foldable_batch_norms_and_keeps_the_outputs():
    model = mixed_model()
    nested_bn = _batch_norm_names(model.get_layer("nested"))
    assert _batch_norm_names(model) == FOLDED | KEPT | nested_bn
    folded, count = folding.fold_batch_norms(model)
    assert count == len(FOLDED) + len(nested_bn) == 5
    assert _batch_norm_names(folded) == KEPT
    for name in FOLDED:
        assert folded.get_layer(name).__class__.__name__ == "Identity"
    assert folded.get_layer("conv_nobias").use_bias
    assert folded.get_layer("depthwise").use_bias
    x = np.random.default_rng(3).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    want = model.predict(x, verbose=0)
    got = folded.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_a_sequential_model_folds_too():
    import keras
    from keras import layers

    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            layers.Conv2D(4, 3, use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(3),
            layers.BatchNormalization(),
        ]
    )
    _randomise_batch_norms(model, np.random.default_rng(5))
    folded, count = folding.fold_batch_norms(model)
    assert count == 2
    assert not _batch_norm_names(folded)
    x = np.random.default_rng(6).uniform(0, 1, (3, SIZE, SIZE, 1)).astype(np.float32)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_a_model_without_batch_norms_is_left_alone(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert folding.fold_batch_norms(model) == (model, 0)


def _release(tmp_path, model, name: str = "saved"):
    root = tmp_path / name / "1"
    root.mkdir(parents=True)
    model.save(root / "model.keras")
    spec = InputSpec(height=SIZE, width=SIZE, scale=1 / 127.5, offset=-1.0)
    write_release_metadata(root, name="bn", version="1", labels=LABELS, spec=spec, top_k=3, extra={})
    return root


def _probe(seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def never_fold(monkeypatch) -> None:
    """From here on, folding anything fails the test: a worker must never fold."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a worker folded batch norms")

    monkeypatch.setattr(folding, "plan_folding", refuse)
    monkeypatch.setattr(folding, "fold_batch_norms", refuse)


def _load(root):
    import keras
    import tensorflow as tf

    return backends.load_keras(read_release(root), backends.LoadContext(tf=tf, keras=keras))


def test_cut_folds_at_release_time_and_the_metadata_names_the_folded_file(tmp_path):
    model = mixed_model()
    source = _release(tmp_path, model)
    release = release_tools.cut(source, "2", out=tmp_path / "bn" / "2")
    assert read_release(release.path).sha256 == file_sha256(release.path / "model.keras")  # the checked artefact
    record = release.extra["folding"]
    assert record["batch_norms"] == 5
    assert record["from_sha256"] == read_release(source).sha256 != release.sha256
    assert 0 <= record["parity"]["max_abs_diff"] <= record["parity"]["max_abs_diff_allowed"] == 1e-4
    assert record["parity"]["top1_agreement"] == 1.0
    assert record["parity"]["samples"] == 16  # no sample images: seeded ones
    import keras

    served = keras.saving.load_model(release.model_file, compile=False)
    assert _batch_norm_names(served) == KEPT  # folded in the file, not at load
    x = _probe(10)
    np.testing.assert_allclose(served.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_the_parity_gate_refuses_a_fold_that_changes_the_predictions(tmp_path, monkeypatch, capsys):
    """A wrong fold (here: the batch norm's shift forgotten) is never released; nothing is written."""
    source = _release(tmp_path, mixed_model())
    right = folding._folded

    def wrong(linear, bn):
        kernel, bias = right(linear, bn)
        return [kernel, np.zeros_like(bias)]

    monkeypatch.setattr(folding, "_folded", wrong)
    out = tmp_path / "bn" / "2"
    with pytest.raises(ReleaseError, match=r"folding 5 batch norms of bn fails the parity gate: max abs diff "):
        release_tools.cut(source, "2", out=out)
    assert not out.exists()
    assert release_tools.main(["cut", str(source), "2", "--out", str(out)]) == 2
    assert "--no-fold releases the model as saved" in capsys.readouterr().err
    assert not out.exists()
    # Within a looser bound than the fold moved the outputs by, the same fold passes the gate.
    assert release_tools.cut(source, "2", out=out, gate=release_tools.Gate(max_abs_diff=1e3, min_top1=0.0))


def test_no_fold_cuts_the_model_as_saved(tmp_path):
    source = _release(tmp_path, mixed_model())
    release = release_tools.cut(source, "2", out=tmp_path / "bn" / "2", fold_batch_norms=False)
    assert "folding" not in release.extra
    assert release.sha256 == read_release(source).sha256


def test_a_model_without_batch_norms_is_cut_without_tensorflow(tmp_path, monkeypatch):
    """Most cuts (a version bump of the demo models) never load the model."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    root = tmp_path / "plain" / "1"
    root.mkdir(parents=True)
    model.save(root / "model.keras")
    write_release_metadata(root, name="plain", version="1", labels=["a", "b"], spec=_tensor(4), top_k=1, extra={})

    def no_keras():
        raise AssertionError("cut loaded the model")

    monkeypatch.setattr(release_tools, "_keras", no_keras)
    release = release_tools.cut(root, "2", out=tmp_path / "plain" / "2")
    assert release.sha256 == read_release(root).sha256
    assert "folding" not in release.extra


def _tensor(width: int):
    from inference.release import TensorSpec

    return TensorSpec(shape=(width,))


def test_the_worker_serves_a_folded_release_as_it_is(tmp_path, monkeypatch):
    model = mixed_model()
    release = release_tools.cut(_release(tmp_path, model), "2", out=tmp_path / "bn" / "2")
    never_fold(monkeypatch)
    loaded = _load(release.path)
    assert loaded.runtime.endswith("(5 batch norms folded)")  # read from the metadata
    x = _probe(7)
    np.testing.assert_allclose(loaded.call(x)[0], model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_an_unfolded_release_still_serves_correctly_as_saved(tmp_path, monkeypatch):
    """A release cut before folding moved to release time (on hosts, or rolled back to)."""
    model = mixed_model()
    never_fold(monkeypatch)
    loaded = _load(_release(tmp_path, model))
    assert "folded" not in loaded.runtime
    x = _probe(8, 2)
    np.testing.assert_allclose(loaded.call(x)[0], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_the_app_predicts_with_the_folded_release_and_says_so(tmp_path, monkeypatch):
    model = mixed_model()
    release = release_tools.cut(_release(tmp_path, model), "2", out=tmp_path / "bn" / "2")
    never_fold(monkeypatch)
    rng = np.random.default_rng(9)
    pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    want = model.predict(pixels[None].astype(np.float32) / 127.5 - 1.0, verbose=0)[0]
    client = create_app({"model_dir": str(release.path)}).test_client()
    meta = client.get("/metadata").get_json()
    assert meta["model"]["runtime"].endswith("(5 batch norms folded)")
    assert meta["model"]["folding"]["batch_norms"] == 5
    response = client.post("/predict", data={"image": (io.BytesIO(buf.getvalue()), "x.png")})
    assert response.status_code == 200
    body = response.get_json()
    assert body["best_prediction"] == LABELS[int(want.argmax())]
    by_label = {p["label"]: p["probability"] for p in body["predictions"]}
    for label, probability in by_label.items():
        assert probability == pytest.approx(float(want[LABELS.index(label)]), abs=1e-5)
    assert json.loads((release.path / "metadata.json").read_text())["cut_from"] == "bn:1"
