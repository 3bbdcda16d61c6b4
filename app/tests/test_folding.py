"""Batch norms folded into the layers before them (folding.py): exactly the foldable ones, the
same outputs as the model as saved, a broken fold refused at load, and the app serving it."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from inference import backends, create_app, folding
from inference.config import Settings
from inference.release import InputSpec, read_release, write_release_metadata

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


def _release(tmp_path, model):
    root = tmp_path / "bn" / "1"
    root.mkdir(parents=True)
    model.save(root / "model.keras")
    spec = InputSpec(height=SIZE, width=SIZE, scale=1 / 127.5, offset=-1.0)
    write_release_metadata(root, name="bn", version="1", labels=LABELS, spec=spec, top_k=3, extra={})
    return root


def _load(root, fold: bool = True):
    import keras
    import tensorflow as tf

    return backends.load_keras(read_release(root), tf, keras, (1,), fold)


def test_load_serves_the_folded_model(tmp_path):
    model = mixed_model()
    root = _release(tmp_path, model)
    loaded = _load(root)
    assert loaded.runtime.endswith("(5 batch norms folded)")
    assert "folded" not in _load(root, fold=False).runtime
    x = np.random.default_rng(7).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.call(x)[0], model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_a_fold_that_changes_the_outputs_is_refused(tmp_path, monkeypatch, caplog):
    """A wrong fold (here: the batch norm's shift forgotten) must never serve."""
    model = mixed_model()
    root = _release(tmp_path, model)
    right = folding._folded

    def wrong(linear, bn):
        kernel, bias = right(linear, bn)
        return [kernel, np.zeros_like(bias)]

    monkeypatch.setattr(folding, "_folded", wrong)
    with caplog.at_level(logging.WARNING, logger="inference.backends"):
        loaded = _load(root)
    assert loaded.runtime == _load(root, fold=False).runtime
    assert "folded" not in loaded.runtime
    assert any("folding 5 batch norms moved an output by" in r.getMessage() for r in caplog.records)
    x = np.random.default_rng(8).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.call(x)[0], model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_the_app_predicts_with_the_folded_model_and_says_so(tmp_path):
    model = mixed_model()
    root = _release(tmp_path, model)
    rng = np.random.default_rng(9)
    pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    want = model.predict(pixels[None].astype(np.float32) / 127.5 - 1.0, verbose=0)[0]
    client = create_app({"model_dir": str(root)}).test_client()
    meta = client.get("/metadata").get_json()
    assert meta["model"]["runtime"].endswith("(5 batch norms folded)")
    response = client.post("/predict", data={"image": (io.BytesIO(buf.getvalue()), "x.png")})
    assert response.status_code == 200
    body = response.get_json()
    assert body["best_prediction"] == LABELS[int(want.argmax())]
    by_label = {p["label"]: p["probability"] for p in body["predictions"]}
    for label, probability in by_label.items():
        assert probability == pytest.approx(float(want[LABELS.index(label)]), abs=1e-5)


def test_the_setting_reads_from_the_environment():
    assert Settings.from_env(environ={}).tf_fold_batch_norms is True
    assert Settings.from_env(environ={"FUNFLEET_TF_FOLD_BATCH_NORMS": "0"}).tf_fold_batch_norms is False
