"""Dense outputs: the segmentation demo model labels each pixel of a held-out digit, through
/predict as JSON and as a PNG mask, and through TF Serving and KServe v2 as raw tensors; every
answer is compared with Keras's own output for the same input."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, SAMPLES
from inference.preprocess import decode_image
from inference.release import read_release

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
SEGMENTS = ROOT / "files" / "models" / "digit-segments" / "1"


@pytest.fixture(scope="module")
def seg_client(tmp_path_factory):
    import shutil

    from inference import create_app

    root = tmp_path_factory.mktemp("seg") / "model"
    shutil.copytree(SEGMENTS, root / "digit-segments" / "1")
    (root / "models.json").write_text(json.dumps({"models": [{"name": "digit-segments", "versions": ["1"]}]}))
    return create_app({"model_dir": str(root)}).test_client()


@pytest.fixture(scope="module")
def keras_masks():
    """Keras's own class map for the held-out samples 3 and 8."""
    import keras

    model = keras.saving.load_model(SEGMENTS / "model.keras", compile=False)
    spec = read_release(SEGMENTS).input
    x = np.stack([decode_image((SAMPLES / f"{d}.png").read_bytes(), spec, 1 << 24) for d in ("3", "8")])
    return {"3": model.predict(x, verbose=0)[0], "8": model.predict(x, verbose=0)[1]}


def build_script():
    """files/models/train_segmentation.py as a module (its held-out split and its IoU), its folder
    importable as when it runs."""
    import importlib

    models = str(SEGMENTS.parents[1])
    if models not in sys.path:
        sys.path.append(models)
    return importlib.import_module("train_segmentation")


def test_the_served_model_holds_its_quality_on_the_held_out_set(seg_client):
    """Measured here, with the served model on the training script's held-out digits, not read
    from the metadata: in band on this CPU, and what the release says of itself (within 0.01:
    pixels whose two best classes are near ties may round the other way on another CPU)."""
    meta = json.loads((SEGMENTS / "metadata.json").read_text())
    script = build_script()
    x, target, _, idx_test = script.arrays(int(meta["seed"]))
    runtime = seg_client.application.extensions["funfleet.runtime"]
    assert runtime.get().release.task == "segmentation"
    predicted = runtime.get().predict(x[idx_test])[0].argmax(axis=-1)
    pixel_accuracy = float((predicted == target[idx_test]).mean())
    mean_iou = script.mean_iou(target[idx_test], predicted)
    assert len(idx_test) == meta["heldout_size"]
    assert pixel_accuracy >= 0.85
    assert mean_iou >= 0.5
    assert pixel_accuracy == pytest.approx(meta["heldout_pixel_accuracy"], abs=0.01)
    assert mean_iou == pytest.approx(meta["heldout_mean_iou"], abs=0.01)


@pytest.mark.parametrize("digit", ["3", "8"])
def test_json_mask_matches_keras(seg_client, keras_masks, digit):
    response = seg_client.post("/predict", data=(SAMPLES / f"{digit}.png").read_bytes(), content_type="image/png")
    assert response.status_code == 200
    body = response.get_json()
    mask = np.array(body["mask"])
    assert mask.shape == (32, 32)
    expected = keras_masks[digit].argmax(axis=-1)
    # Pixels whose two best classes are within float noise of each other may flip on another CPU.
    top2 = np.sort(keras_masks[digit], axis=-1)[..., -2:]
    sure = (top2[..., 1] - top2[..., 0]) > 1e-4
    assert (mask[sure] == expected[sure]).all()
    assert body["labels"][0] == "background"
    # Most ink pixels are labelled with the right digit.
    assert max((k for k in body["pixels"] if k != "background"), key=body["pixels"].get) == digit


def test_png_mask_holds_the_class_indices(seg_client):
    data = (SAMPLES / "3.png").read_bytes()
    as_json = np.array(seg_client.post("/predict", data=data, content_type="image/png").get_json()["mask"])
    response = seg_client.post("/predict?format=png", data=data, content_type="image/png")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    png = Image.open(io.BytesIO(response.get_data()))
    assert png.mode == "P"
    assert (np.array(png) == as_json).all()
    by_accept = seg_client.post("/predict", data=data, content_type="image/png", headers={"Accept": "image/png"})
    assert by_accept.mimetype == "image/png"


def test_tensor_protocols_return_the_raw_scores(seg_client, keras_masks):
    spec = read_release(SEGMENTS).input
    x = decode_image((SAMPLES / "3.png").read_bytes(), spec, 1 << 24)
    tf_serving = seg_client.post("/v1/models/digit-segments:predict", json={"instances": [x.tolist()]})
    scores = np.array(tf_serving.get_json()["predictions"][0])
    assert scores.shape == (32, 32, 11)
    np.testing.assert_allclose(scores, keras_masks["3"], atol=1e-5)
    v2 = seg_client.post(
        "/v2/models/digit-segments/infer",
        json={
            "inputs": [{"name": "image", "shape": [1, 32, 32, 1], "datatype": "FP32", "data": x.reshape(-1).tolist()}]
        },
    )
    out = v2.get_json()["outputs"][0]
    assert (out["name"], out["shape"]) == ("class_map", [1, 32, 32, 11])
    np.testing.assert_allclose(np.array(out["data"]).reshape(32, 32, 11), keras_masks["3"], atol=1e-5)
