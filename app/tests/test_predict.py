"""Predictions on held-out samples, through every input path."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from helpers import MODEL_DIR, encode, load_training_script


@pytest.mark.parametrize("label", [str(i) for i in range(10)])
def test_multipart_upload_gives_the_right_label(client, samples, label):
    response = client.post("/predict", data={"image": (io.BytesIO(samples[label]), f"{label}.png")})
    assert response.status_code == 200
    body = response.get_json()
    assert body["best_prediction"] == label
    assert body["predictions"][0]["label"] == label
    assert body["predictions"][0]["probability"] > 0.5
    assert len(body["predictions"]) == 3
    assert body["model"] == {"name": "digits", "version": "1"}
    probabilities = [p["probability"] for p in body["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize("label", [str(i) for i in range(10)])
def test_light_on_dark_digits_give_the_right_label(client, inverted_samples, label):
    response = client.post("/predict", data={"image": (io.BytesIO(inverted_samples[label]), f"{label}.png")})
    assert response.status_code == 200
    assert response.get_json()["best_prediction"] == label


def test_committed_model_on_the_whole_heldout_set_in_both_polarities(client):
    """Measured here, through /predict, not read from the metadata: the band holds on this CPU too."""
    train = load_training_script()
    y, _, idx_test, encoded = train.split(json.loads((MODEL_DIR / "metadata.json").read_text())["seed"])
    for polarity in train.POLARITIES:
        right = sum(
            client.post("/predict", data={"image": (io.BytesIO(encoded[polarity][i]), "d.png")}).get_json()[
                "best_prediction"
            ]
            == str(y[i])
            for i in idx_test
        )
        assert right / len(idx_test) >= 0.97, (polarity, right, len(idx_test))


def test_top_k_query(client, samples):
    response = client.post("/predict?top_k=10", data={"image": (io.BytesIO(samples["4"]), "4.png")})
    body = response.get_json()
    assert response.status_code == 200
    assert len(body["predictions"]) == 10
    assert sorted(p["label"] for p in body["predictions"]) == [str(i) for i in range(10)]
    assert sum(p["probability"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("top_k", ["0", "11", "x", "-1"])
def test_bad_top_k_is_400(client, samples, top_k):
    response = client.post(f"/predict?top_k={top_k}", data={"image": (io.BytesIO(samples["4"]), "4.png")})
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_top_k"


def test_raw_image_body(client, samples):
    response = client.post("/predict", data=samples["8"], content_type="image/png")
    assert response.status_code == 200
    assert response.get_json()["best_prediction"] == "8"


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("JPEG", "RGB"),
        ("WEBP", "RGB"),
        ("BMP", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("PNG", "P"),
        ("PNG", "LA"),
        ("GIF", "P"),
        ("TIFF", "CMYK"),
        ("PNG", "1"),
        ("PNG", "I;16"),
    ],
)
def test_any_readable_mode_is_converted(client, samples, fmt, mode):
    img = Image.open(io.BytesIO(samples["2"])).convert("L")
    if mode == "I;16":
        converted = Image.fromarray((np.asarray(img, dtype=np.uint16) * 257).astype(np.uint16))
    elif mode == "1":
        converted = img.point(lambda v: 255 if v > 128 else 0).convert("1")
    else:
        converted = img.convert(mode)
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    response = client.post("/predict", data={"image": (io.BytesIO(encode(converted, fmt, **kwargs)), "x")})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["best_prediction"] == "2"


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(client, samples, orientation):
    """A phone's photo is stored sideways with an EXIF Orientation tag: it is turned upright
    before the model sees it, pixel for pixel as the upright image decodes."""
    from inference.preprocess import decode_image
    from inference.release import read_release

    upright = Image.open(io.BytesIO(samples["7"])).convert("RGB")
    # What a camera stores for each tag: the upright image turned the other way.
    stored = upright.transpose(
        {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = encode(stored, "PNG", exif=exif.tobytes())
    spec = read_release(MODEL_DIR).input

    def decoded(data: bytes) -> np.ndarray:
        return decode_image(data, spec, 1 << 24)

    np.testing.assert_array_equal(decoded(tagged), decoded(encode(upright, "PNG")))
    assert not np.array_equal(decoded(tagged), decoded(encode(stored, "PNG")))
    response = client.post("/predict", data={"image": (io.BytesIO(tagged), "photo.png")})
    assert response.status_code == 200
    assert response.get_json()["best_prediction"] == "7"


def test_transparent_background_is_composited_on_white(client, samples):
    ink = Image.open(io.BytesIO(samples["6"])).convert("L")
    # Transparent where the sample is white: only the ink is opaque.
    alpha = Image.eval(ink, lambda v: 255 - v)
    rgba = Image.new("RGBA", ink.size, (0, 0, 0, 0))
    rgba.putalpha(alpha)
    response = client.post("/predict", data={"image": (io.BytesIO(encode(rgba, "PNG")), "x.png")})
    assert response.status_code == 200
    assert response.get_json()["best_prediction"] == "6"


@pytest.mark.parametrize("size", [(1, 1), (4000, 4000)])
def test_extreme_sizes_are_served(client, size):
    img = Image.new("RGB", size, (255, 255, 255))
    response = client.post("/predict", data={"image": (io.BytesIO(encode(img, "JPEG")), "x.jpg")})
    assert response.status_code == 200
    assert response.get_json()["best_prediction"] in [str(i) for i in range(10)]


def test_large_jpeg_of_a_digit_still_classifies(client, samples):
    big = Image.open(io.BytesIO(samples["9"])).resize((2048, 2048), Image.Resampling.BILINEAR)
    response = client.post("/predict", data={"image": (io.BytesIO(encode(big, "JPEG", quality=90)), "x.jpg")})
    assert response.status_code == 200
    assert response.get_json()["best_prediction"] == "9"


def test_same_image_same_answer_across_paths(client, samples):
    multipart = client.post("/predict?top_k=10", data={"image": (io.BytesIO(samples["5"]), "5.png")}).get_json()
    b64 = base64.b64encode(samples["5"]).decode()
    tfs = client.post("/v1/models/digits:predict", json={"instances": [{"b64": b64}]}).get_json()
    by_label = {p["label"]: p["probability"] for p in multipart["predictions"]}
    assert tfs["predictions"][0] == pytest.approx([by_label[str(i)] for i in range(10)], abs=1e-6)
