"""Hostile input answered as a 4xx, cheaply: decoding bounded by the pixels a request may hold
(checked from each image's header, over every instance of a batch), wide images rescaled
without full-size float copies, KServe's ``parameters`` of the wrong type, and metric labels
that no client can grow."""

from __future__ import annotations

import base64
import io
import json
import random
import string
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from helpers import MODEL_DIR, encode
from inference.preprocess import FORMATS, InputError, PixelBudget, decode_image
from inference.release import read_release

SIDE = 4096  # the largest image accepted (max_image_pixels is 4096 * 4096)


@pytest.fixture(scope="module")
def spec():
    return read_release(MODEL_DIR).input


@pytest.fixture(scope="module")
def zero_png16() -> bytes:
    """The finding's image: 4096x4096, 16 bits, all zero; about 35 KB as a PNG."""
    return encode(Image.fromarray(np.zeros((SIDE, SIDE), np.uint16)), "PNG")


def b64_instances(data: bytes, count: int) -> dict:
    return {"instances": [{"b64": base64.b64encode(data).decode()}] * count}


def test_a_batch_over_the_request_pixel_budget_is_413_before_any_decode(client, zero_png16):
    # Three images of 16.7 million pixels each: 50 million, over the 33.5 million a request may hold.
    assert len(zero_png16) < 64 * 1024
    r = client.post("/v1/models/digits:predict", json=b64_instances(zero_png16, 3))
    assert r.status_code == 413, r.get_data(as_text=True)
    body = r.get_json()
    assert body["code"] == "request_too_large"
    assert "instance 2" in body["error"]
    assert "33554432" in body["error"]


def test_a_batch_within_the_budget_is_served(client, zero_png16):
    r = client.post("/v1/models/digits:predict", json=b64_instances(zero_png16, 2))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert len(r.get_json()["predictions"]) == 2


def test_the_budget_counts_every_image_of_the_request():
    budget = PixelBudget(100, 250)
    budget.take(10, 10)
    budget.take(10, 10)
    with pytest.raises(InputError) as over:
        budget.take(10, 10, where="instance 2")
    assert over.value.code == "request_too_large"
    with pytest.raises(InputError) as big:
        PixelBudget(100, 1000).take(11, 10)
    assert big.value.code == "image_too_large"


def test_a_16_bit_image_is_rescaled_without_a_full_size_float_copy(spec, zero_png16):
    """The old path made a float64 copy of the whole image (134 MB for this one) and two more
    temporaries; numpy's allocations are traced, Pillow's 32-bit working copy is not."""
    tracemalloc.start()
    try:
        decode_image(zero_png16, spec, SIDE * SIDE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"decoding allocated {peak / 2**20:.0f} MiB through numpy"


def test_a_16_bit_image_decodes_as_its_8_bit_twin(spec, samples):
    eight = Image.open(io.BytesIO(samples["4"])).convert("L")
    sixteen = Image.fromarray(np.asarray(eight, np.uint16) * 257)  # 0..255 -> 0..65535
    a = decode_image(samples["4"], spec, 1 << 24)
    b = decode_image(encode(sixteen, "PNG"), spec, 1 << 24)
    assert np.abs(a - b).max() < 0.02 * max(1.0, float(np.abs(a).max()))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "MPO", "GIF", "TIFF", "WEBP", "BMP", "PPM"])
def test_every_format_is_refused_from_its_header_when_over_the_budget(spec, fmt):
    """An image over the budget is refused from its header, whatever its format: where the
    format can be opened from its first KiB (all but WebP, which Pillow checks whole), the
    first KiB alone is refused as too large, not as a corrupt image."""
    data = encode(Image.effect_noise((256, 256), 64).convert("RGB"), fmt)
    cuts = [len(data)] if fmt == "WEBP" else [len(data), 1024]
    for cut in cuts:
        with pytest.raises(InputError) as refused:
            decode_image(data[:cut], spec, PixelBudget(256 * 255))
        assert refused.value.code == "image_too_large", (fmt, cut, refused.value.message)
    assert decode_image(data, spec, PixelBudget(256 * 256)).shape == spec.shape


def test_an_oversized_upload_is_413_on_predict(client):
    data = encode(Image.new("L", (5000, 5000)), "PNG")
    r = client.post("/predict", data={"image": (io.BytesIO(data), "x.png")})
    assert r.status_code == 413, r.get_data(as_text=True)
    assert r.get_json()["code"] == "image_too_large"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP", "PPM"])
def test_every_accepted_format_is_served(client, samples, fmt):
    img = Image.open(io.BytesIO(samples["7"])).convert("RGB")
    r = client.post("/predict", data={"image": (io.BytesIO(encode(img, fmt)), f"7.{fmt.lower()}")})
    assert r.status_code == 200, (fmt, r.get_data(as_text=True))
    assert r.get_json()["best_prediction"] == "7"


def test_an_animated_gif_is_read_from_its_first_frame(client, samples):
    first = Image.open(io.BytesIO(samples["3"])).convert("L")
    frames = [first] + [Image.new("L", first.size, 255)] * 50
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    r = client.post("/predict", data={"image": (io.BytesIO(out.getvalue()), "3.gif")})
    assert r.status_code == 200
    assert r.get_json()["best_prediction"] == "3"


@pytest.mark.parametrize("fmt", ["SGI", "ICO", "TGA"])
def test_formats_outside_the_list_are_unsupported_media(client, samples, fmt):
    """ICO among them: Pillow decodes an icon inside open(), before its size can be checked."""
    assert fmt not in FORMATS
    data = encode(Image.open(io.BytesIO(samples["7"])).convert("RGB"), fmt)
    r = client.post("/predict", data={"image": (io.BytesIO(data), f"7.{fmt.lower()}")})
    assert r.status_code == 415, r.get_data(as_text=True)
    assert r.get_json()["code"] == "unsupported_media"


KSERVE_MALFORMED = {
    "parameters as a string on an input": {
        "inputs": [{"name": "{input}", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], "parameters": "x"}]
    },
    "parameters as a list at the top level": {
        "inputs": [{"name": "{input}", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "parameters": [1],
    },
    "parameters as a number on an output": {
        "inputs": [{"name": "{input}", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "{output}", "parameters": 3}],
    },
    "binary_data_size as a string": {
        "inputs": [
            {
                "name": "{input}",
                "shape": [1, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": "16"},
            }
        ]
    },
    "classification as a string": {
        "inputs": [{"name": "{input}", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "{output}", "parameters": {"classification": "2"}}],
    },
    "an output name that is a list": {
        "inputs": [{"name": "{input}", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": ["x"]}],
    },
}


@pytest.mark.parametrize("case", sorted(KSERVE_MALFORMED))
def test_kserve_malformed_parameters_are_400_not_500(multi_client, case):
    meta = multi_client.get("/v2/models/iris").get_json()
    text = json.dumps(KSERVE_MALFORMED[case])
    text = text.replace("{input}", meta["inputs"][0]["name"]).replace("{output}", meta["outputs"][0]["name"])
    r = multi_client.post("/v2/models/iris/infer", data=text, content_type="application/json")
    assert r.status_code == 400, (case, r.status_code, r.get_data(as_text=True))
    assert "error" in r.get_json()


def metric_series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_random_methods_share_one_metric_label(client):
    rng = random.Random(7)
    methods = {"".join(rng.choices(string.ascii_uppercase, k=8)) for _ in range(60)}
    before = metric_series(client.get("/metrics").get_data(as_text=True), "funfleet_http_requests_total")
    for method in methods:
        assert client.open("/healthz", method=method).status_code == 405
    after = metric_series(client.get("/metrics").get_data(as_text=True), "funfleet_http_requests_total")
    assert not any(m in line for line in after for m in methods)
    assert any('method="other"' in line and 'status="405"' in line for line in after)
    # At most one new series for all of them (the other/405 one) and one for /metrics itself.
    assert len(after) - len(before) <= 2, sorted(set(after) - set(before))


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/models/nope:predict"), ("POST", "/readyz"), ("PUT", "/predict")]
)
def test_a_body_the_answer_did_not_need_is_read_to_its_end(client, method, path):
    """uWSGI closes the socket after the response: a body left unread made nginx, still writing
    it, answer 502 for a request that had its 4xx (and a balancer counts a 502 against the host)."""
    body = io.BytesIO(b"\0" * (1 << 20))
    r = client.open(
        path,
        method=method,
        input_stream=body,
        headers={"Content-Type": "application/json", "Content-Length": str(1 << 20)},
    )
    assert 400 <= r.status_code < 500
    assert body.tell() == 1 << 20
