"""Hostile input, generated: every parser (multipart and raw image uploads, /predict's JSON and
text, TF Serving's JSON, KServe's JSON and binary extension) answers malformed and half-valid
input with a 4xx whose body is JSON with an ``error``, never a 5xx or an unhandled exception.

Property-based (Hypothesis), against the real app in process. Generation is derandomized, so a
run explores the same examples on every machine; the example counts keep the file to well under
a minute on two cores."""

from __future__ import annotations

import base64
import io
import json
import logging
import random
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import Image

from helpers import SAMPLES

# Pillow warns of the corrupt TIFF tags and ICO sizes it works around, numpy of the float32
# overflow that is then refused.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Recorder(logging.Handler):
    """The error records of the app's loggers: errors.py's ``log.exception("unhandled error")``
    for a 500, and Flask's own (its app logger is "inference") for an error in a hook."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def unhandled():
    recorder = Recorder()
    logger = logging.getLogger("inference")
    logger.addHandler(recorder)
    yield recorder
    logger.removeHandler(recorder)


def answered_4xx(response, unhandled: Recorder, sent: object) -> None:
    """The property: below 500, no unhandled error logged, and an error is JSON with "error"."""
    records, unhandled.records[:] = list(unhandled.records), []
    status, body = response.status_code, response.get_data()
    if currently_in_test_context():
        event(f"status {status}")  # pytest --hypothesis-show-statistics: what the examples reached
    logged = [r.getMessage() + (f": {r.exc_info[1]!r}" if r.exc_info else "") for r in records]
    assert status < 500, (status, body[:300], repr(sent)[:600])
    assert not logged, (status, logged, repr(sent)[:600])
    if status >= 400:
        doc = json.loads(body)
        assert isinstance(doc, dict), (status, body[:300])
        assert isinstance(doc.get("error"), str), (status, body[:300])


@pytest.fixture(scope="module")
def kinds_client(kinds):
    """tagger (text), wine, diabetes (tabular; diabetes has two outputs), digits-onnx (NCHW)."""
    from inference import create_app

    return create_app({"model_dir": str(kinds), "access_log": False}).test_client()


# --- strategies -------------------------------------------------------------------------------

HUGE_NUMBERS = [2**31, 2**62, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400, 1e308, -1e308, 5e-324]
numbers = st.one_of(
    st.integers(-5, 30),
    st.integers(),
    st.sampled_from(HUGE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
)
# Text with lone surrogates: JSON's "\\ud800" escapes decode to them, and UTF-8 cannot encode them.
SURROGATES = ["\ud800", "\udfff", "\udc80", "a\ud83d"]
strings = st.text(max_size=12) | st.tuples(st.text(max_size=4), st.sampled_from(SURROGATES)).map("".join)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(strings, inner, max_size=5),
    max_leaves=24,
)
# Stands for a deeply nested value, spliced into the body's JSON text (json.dumps would recurse as deep).
DEEP = "\x00deep\x00"
DEEP_JSON = json.dumps(DEEP)
hostile = st.one_of(json_values, st.just(DEEP), st.sampled_from(HUGE_NUMBERS))


@st.composite
def deep(draw) -> str:
    """A value nested a few to a hundred thousand levels deep, as JSON text; around the depth
    where Python's JSON parser gives up too, so that a value parsed at one depth is repr'd or
    dumped deeper."""
    depth = draw(st.sampled_from([2, 63, 64, 65, 500, 5000, 100_000]) | st.integers(850, 1000))
    kind = draw(st.sampled_from(["list", "dict", "mixed"]))
    opens, closes = [], []
    for i in range(depth):
        as_list = kind == "list" or (kind == "mixed" and i % 2 == 0)
        opens.append("[" if as_list else '{"a":')
        closes.append("]" if as_list else "}")
    return "".join(opens) + "1" + "".join(reversed(closes))


@st.composite
def json_bodies(draw, shaped: st.SearchStrategy) -> bytes:
    """A request body: a structured value as JSON (DEEP spliced in), an arbitrary one, or
    JSON-ish bytes made to break parsers."""
    choice = draw(st.integers(0, 9))
    if choice <= 6:
        text = json.dumps(draw(shaped))
        while DEEP_JSON in text:
            text = text.replace(DEEP_JSON, draw(deep()), 1)
        return text.encode()
    if choice == 7:
        return json.dumps(draw(json_values)).encode() if draw(st.booleans()) else draw(deep()).encode()
    if choice == 8:
        return draw(
            st.sampled_from(
                [
                    b"",
                    b"null",
                    b"{",
                    b'{"a": 1e999}',
                    b"[NaN, Infinity, -Infinity]",
                    b"[" + b"9" * 5000 + b"]",
                    b'"\\ud800"',
                    b'{"text": "\\udfff\\ud800"}',
                    b"\xff\xfe{\x00}\x00",
                    b'{"text": "\xc3\x28"}',
                    b'\xef\xbb\xbf{"text": "bom"}',
                ]
            )
        )
    return draw(st.binary(max_size=64))


FAULTS = st.sampled_from([0, 0, 0, 1, 1, 2])
# The numbers a parser meets at its edges: beyond float64 (as a JSON integer), beyond int64, NaN.
EDGE_NUMBERS = [10**400, -(10**400), 2**64, 2**63, 1e308, float("nan"), float("inf")]


@st.composite
def mutated(draw, valid: dict, keys: list[str], faults: st.SearchStrategy = FAULTS) -> dict:
    """``valid`` with none (half the time), one or two of ``keys`` replaced by a hostile value or removed."""
    value = dict(valid)
    for _ in range(draw(faults)):
        key = draw(st.sampled_from(keys))
        if draw(st.integers(0, 4)) == 0:
            value.pop(key, None)
        else:
            value[key] = draw(hostile)
    return value


@st.composite
def filled(draw, count: int, faults: st.SearchStrategy = FAULTS) -> list:
    """``count`` numbers: one value repeated, a few of them at the edges or hostile."""
    values = [draw(st.floats(-10, 10))] * count
    for _ in range(draw(faults)):
        edge = draw(st.booleans())
        values[draw(st.integers(0, count - 1))] = draw(st.sampled_from(EDGE_NUMBERS) if edge else numbers | hostile)
    return values


# --- images -----------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def _seeds() -> list[bytes]:
    """The sample digits, and two of them in every format and many modes the decoder takes."""
    seeds = [p.read_bytes() for p in sorted(SAMPLES.glob("*.png"))]
    for stem in ("3", "7"):
        gray = Image.open(SAMPLES / f"{stem}.png").convert("L")
        rgb = gray.convert("RGB")
        seeds += [_encode(rgb, fmt) for fmt in ("JPEG", "GIF", "TIFF", "WEBP", "BMP", "PPM")]
        seeds += [
            _encode(gray.convert("I;16"), "PNG"),
            _encode(gray.convert("I;16"), "TIFF"),
            _encode(gray.convert("F"), "TIFF"),
            _encode(gray.convert("1"), "BMP"),
            _encode(gray.convert("LA"), "PNG"),
            _encode(gray.convert("RGBA"), "WEBP"),
            _encode(gray.convert("CMYK"), "JPEG"),
            _encode(gray.convert("CMYK"), "TIFF"),
            _encode(gray.convert("P"), "GIF", transparency=0),
            _encode(rgb, "JPEG", progressive=True),
            _encode(rgb, "TIFF", compression="tiff_lzw"),
        ]
    return seeds


SEEDS = _seeds()


@st.composite
def mutated_images(draw) -> bytes:
    """A real image, cut short, bit-flipped, overwritten, with bytes inserted or repeated;
    mostly in its first 64 bytes, where the header every decoder trusts lies."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 5))):
        if not data:
            break
        at = draw(st.integers(0, min(63, len(data) - 1)) | st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "byte", "cut", "insert", "repeat", "extreme"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 4))
        else:  # a size or offset field made as large or small as it goes
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00"]))
    return bytes(data)


image_bodies = st.one_of(mutated_images(), st.binary(max_size=256), st.sampled_from(SEEDS))
b64_values = st.one_of(
    image_bodies.map(lambda b: base64.b64encode(b).decode()),
    image_bodies.map(lambda b: base64.b64encode(b).decode().rstrip("=")[:-1]),
    st.text(max_size=40),
    hostile,
)


# --- POST /predict: uploads -------------------------------------------------------------------

LATIN1 = st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n")
tokens = st.text(alphabet=LATIN1, max_size=16)
boundaries = st.one_of(
    st.sampled_from(["b", "boundary123", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "a" * 70, "a" * 300, "€", "b€"]),
    st.text(alphabet=LATIN1, min_size=1, max_size=20),
    # Any Unicode: a header carries it only RFC 2231-encoded (boundary*=utf-8''%E2%82%AC).
    st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), min_size=1, max_size=8),
)


@st.composite
def boundary_param(draw, boundary: str) -> str:
    """The boundary as a Content-Type carries it: a token, quoted, or RFC 2231-encoded (in one
    parameter or continued over two), the only way for one outside latin-1."""
    form = draw(st.sampled_from(["token", "quoted", "rfc2231", "continued"]))
    if form == "token" and boundary.isascii():
        return f"boundary={boundary}"
    if form == "quoted" and boundary.isascii():
        return f'boundary="{boundary}"'
    charset = draw(st.sampled_from(["utf-8", "UTF-8", "latin-1", "x-unknown", ""]))
    if form != "continued":
        return f"boundary*={charset}''{quote(boundary, safe='')}"
    cut = draw(st.integers(0, len(boundary)))
    return f"boundary*0*={charset}''{quote(boundary[:cut], safe='')}; boundary*1*={quote(boundary[cut:], safe='')}"


@st.composite
def content_types(draw, boundary: str) -> str:
    mimetype = draw(
        st.sampled_from(["multipart/form-data", "MULTIPART/FORM-DATA", "multipart/mixed", "multipart/form-data "])
        | tokens
    )
    params = []
    for _ in range(draw(st.integers(0, 2))):
        key = draw(
            st.sampled_from(["boundary", "BOUNDARY", "charset", "boundary*", "boundary*0", "boundary*1*"]) | tokens
        )
        value = draw(st.sampled_from([boundary, "utf-8''%ff%fe", "''", '"', "%", "x'y'%zz", ""]) | tokens)
        params.append(f"{key}={value}")
    if draw(st.integers(0, 5)):
        params.insert(draw(st.integers(0, len(params))), draw(boundary_param(boundary)))
    separator = draw(st.sampled_from(["; ", ";", " ;", ";;", ", "]))
    return separator.join([mimetype, *params])


@st.composite
def parts(draw) -> bytes:
    name = draw(st.sampled_from(["image", "model", "version", "Image", ""]) | tokens)
    headers = []
    disposition = draw(st.sampled_from(["form-data", "Form-Data", "attachment", "", "form-data; form-data"]))
    disposition += f'; name="{name}"' if draw(st.booleans()) else f"; name={name}"
    if draw(st.booleans()):
        disposition += f'; filename="{draw(tokens)}"'
    if draw(st.integers(0, 4)) == 0:
        disposition += "; filename*=" + draw(st.sampled_from(["UTF-8''%e2%82%ac.png", "utf-8''%ff", "x", "''"]))
    if draw(st.integers(0, 5)):
        headers.append(f"Content-Disposition: {disposition}")
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(["Content-Type", "Content-Transfer-Encoding", "X", ""]) | tokens)
        headers.append(f"{key}: {draw(tokens)}" if draw(st.integers(0, 5)) else key)
    if name in ("model", "version"):
        content = draw(st.sampled_from([b"digits", b"iris", b"1", b"2", b"\xff\xfe", b""]) | st.binary(max_size=16))
    else:
        content = draw(image_bodies)
    head = "\r\n".join(headers).encode("latin-1")
    return head + b"\r\n\r\n" + content


@st.composite
def well_formed_upload(draw) -> tuple[str, str, bytes]:
    """An upload as clients encode it (the fast path's case): an image part, maybe a model field."""
    boundary = draw(st.sampled_from(["b0undary", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "x" * 70]))
    image = draw(image_bodies)
    filename = draw(st.sampled_from(["7.png", "", "a;b.png", "x y.jpg"]))
    media = draw(st.sampled_from(["image/png", "application/octet-stream", "text/plain"]))
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: {media}\r\n\r\n"
    ).encode() + image
    for name in draw(st.lists(st.sampled_from(["model", "version", "image"]), max_size=2)):
        value = draw(st.sampled_from([b"digits", b"1", b"2", b"", b"\xff"]))
        body += f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value
    body += f"\r\n--{boundary}--\r\n".encode()
    query = draw(st.sampled_from(["", "", "?top_k=3", "?top_k=11", "?model=digits&version=1", "?model=iris"]))
    return f"multipart/form-data; boundary={boundary}", query, body


@st.composite
def multipart_requests(draw) -> tuple[str, str, bytes]:
    if draw(st.booleans()):
        return draw(well_formed_upload())
    boundary = draw(boundaries)
    content_type = draw(content_types(boundary))
    used = boundary.encode("utf-8") if draw(st.integers(0, 5)) else draw(tokens).encode("latin-1")
    newline = b"\r\n" if draw(st.integers(0, 4)) else draw(st.sampled_from([b"\n", b"\r", b""]))
    body = b""
    for part in draw(st.lists(parts(), max_size=4)):
        body += b"--" + used + newline + part + newline
    body += b"--" + used + draw(st.sampled_from([b"--", b"--\r\n", b"", b"-", b"\r\n"]))
    if draw(st.integers(0, 3)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    if draw(st.integers(0, 6)) == 0:
        body = draw(st.binary(max_size=128)) + body
    query = draw(st.sampled_from(["", "?model=digits", "?top_k=3", "?top_k=0", "?model=", "?model=iris", "?x=%ff"]))
    return content_type, query, body


@fuzz(300)
@given(upload=multipart_requests())
def test_multipart_uploads(client, unhandled, upload):
    content_type, query, body = upload
    response = client.post(f"/predict{query}", data=body, content_type=content_type)
    answered_4xx(response, unhandled, upload)


@fuzz(300)
@given(
    content_type=st.sampled_from(["application/octet-stream", "image/png", "image/jpeg", "image/x-anything", "image/"]),
    body=image_bodies,
)
def test_raw_image_uploads(client, unhandled, content_type, body):
    response = client.post("/predict", data=body, content_type=content_type)
    answered_4xx(response, unhandled, body)


def test_seeds_are_served(client):
    """The seeds decode: mutations start from images the service takes."""
    for seed in SEEDS:
        response = client.post("/predict", data=seed, content_type="application/octet-stream")
        assert response.status_code == 200, response.get_data(as_text=True)


def test_a_random_body_under_every_media_type(client, unhandled):
    """Not generated by Hypothesis: a fixed pseudo-random sweep of media types and bodies."""
    rng = random.Random(1)
    media = ["multipart/form-data", "multipart/form-data; boundary=", "application/json", "text/plain", "", "x/y"]
    for _ in range(60):
        body = rng.randbytes(rng.randint(0, 200))
        content_type = rng.choice(media)
        response = client.post("/predict", data=body, content_type=content_type)
        answered_4xx(response, unhandled, (content_type, body))


# --- POST /predict: JSON features and text ----------------------------------------------------

IRIS = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


@st.composite
def feature_bodies(draw, names: list[str]) -> object:
    """A tabular instance: by name or as a list, each with hostile values or keys; or anything."""
    row = draw(filled(len(names)))
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(mutated(dict(zip(names, row, strict=True)), [*names, "x"]))
    if choice == 1:
        return row
    if choice == 2:
        return draw(st.lists(st.just(row), max_size=3))  # a batch, which /predict does not take
    if choice == 3:
        return draw(st.dictionaries(st.sampled_from([*names, "x"]), hostile, max_size=6))
    return draw(hostile)


@fuzz(200)
@given(
    body=json_bodies(feature_bodies(IRIS)),
    content_type=st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain", ""]),
    version=st.sampled_from(["", "&version=1", "&version=2", "&version=9"]),
)
def test_predict_tabular_json(multi_client, unhandled, body, content_type, version):
    response = multi_client.post(f"/predict?model=iris{version}", data=body, content_type=content_type)
    answered_4xx(response, unhandled, body)


texts = st.one_of(
    st.text(max_size=60),
    st.tuples(st.text(max_size=20), st.sampled_from(SURROGATES), st.text(max_size=20)).map("".join),
    st.sampled_from(["x" * 2000, "x" * 2001, "word " * 400, "\x00", "\u202e\ufeff", ""]),
)
text_bodies = st.one_of(
    st.builds(lambda t: {"text": t}, texts),
    st.builds(lambda t: {"text": t}, hostile),
    st.fixed_dictionaries({"text": texts}, optional={"extra": hostile}),
    hostile,
)


@fuzz(200)
@given(
    body=json_bodies(text_bodies) | texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    content_type=st.sampled_from(["application/json", "text/plain", "text/plain; charset=utf-16", "application/xml"]),
)
def test_predict_text(kinds_client, unhandled, body, content_type):
    response = kinds_client.post("/predict?model=tagger", data=body, content_type=content_type)
    answered_4xx(response, unhandled, body)


# --- the models the protocols are fuzzed on -------------------------------------------------------

FEATURES = {
    "iris": IRIS,
    "wine": [
        *("alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids"),
        *("nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue", "od280_od315_of_diluted_wines"),
        "proline",
    ],
    "diabetes": ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"],
}
# name: (client fixture, input name, datatype, shape of one instance, output names)
MODELS = {
    "digits": ("multi_client", "input", "FP32", [32, 32, 3], ["output"]),
    "iris": ("multi_client", "features", "FP32", [4], ["species"]),
    "tagger": ("kinds_client", "text", "BYTES", [], ["tags"]),
    "wine": ("kinds_client", "features", "FP32", [13], ["probabilities"]),
    "diabetes": ("kinds_client", "features", "FP32", [10], ["progression", "high_risk"]),
    "digits-onnx": ("kinds_client", "input", "FP32", [1, 16, 16], ["probabilities"]),
}


def nested(values: list, shape: list[int]) -> list:
    """A flat list as a nested one of ``shape``."""
    if len(shape) <= 1:
        return values
    step = len(values) // shape[0]
    return [nested(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


# --- TF Serving -------------------------------------------------------------------------------


@st.composite
def tf_instance(draw, name: str) -> object:
    _, input_name, datatype, shape, _ = MODELS[name]
    if datatype == "BYTES":
        return draw(texts | st.builds(lambda t: {input_name: t}, texts) | hostile)
    count = max(1, int(np.prod(shape)))
    if name.startswith("digits") and draw(st.booleans()):
        b64 = draw(b64_values)
        return draw(st.sampled_from([{"b64": b64}, {input_name: {"b64": b64}}, {"b64": b64, "x": 1}]))
    if name in FEATURES and draw(st.booleans()):
        return draw(mutated(dict(zip(FEATURES[name], draw(filled(count)), strict=True)), [*FEATURES[name], "x"]))
    row = nested(draw(filled(count)), shape)
    return draw(st.sampled_from([row, {input_name: row}, [row], row[:-1] if shape else row]))


@st.composite
def tf_bodies(draw, name: str) -> object:
    instances = draw(st.lists(tf_instance(name), min_size=1, max_size=3))
    choice = draw(st.integers(0, 5))
    if choice <= 1:
        return draw(mutated({"instances": instances}, ["instances", "inputs", "signature_name"]))
    if choice == 2:  # columnar: one tensor, {input: tensor} or {feature: column}
        if name in FEATURES and draw(st.booleans()):
            columns = {f: [row[f] for row in instances if isinstance(row, dict) and f in row] for f in FEATURES[name]}
            return draw(mutated({"inputs": draw(mutated(columns, FEATURES[name]))}, ["inputs"]))
        return draw(mutated({"inputs": instances}, ["inputs", "instances"]))
    if choice == 3:
        return {"inputs": instances[0]}
    if choice == 4:
        return {"instances": draw(hostile)} if draw(st.booleans()) else {"inputs": draw(hostile)}
    return draw(hostile)


@fuzz(300)
@given(
    data=st.data(),
    name=st.sampled_from(sorted(MODELS)),
    version=st.sampled_from([None, None, None, None, None, "1", "1", "x"]),
)
def test_tfserving_predict(request, unhandled, data, name, version):
    client = request.getfixturevalue(MODELS[name][0])
    body = data.draw(json_bodies(tf_bodies(name)), label="body")
    path = f"/v1/models/{name}:predict" if version is None else f"/v1/models/{name}/versions/{version}:predict"
    response = client.post(path, data=body, content_type="application/json")
    answered_4xx(response, unhandled, body)


# --- KServe v2 --------------------------------------------------------------------------------

DATATYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "FP8", "fp32"]
HUGE_DIMS = [2**31, 2**62, 2**63, 2**64, 10**30]


HOSTILE_SHAPES = st.one_of(
    st.lists(st.integers(-2, 4) | st.sampled_from(HUGE_DIMS), max_size=5),
    st.sampled_from([[1, 2**62], [2**62, 4], [1, 2**62, 2**62], [1, 1, 2**62, 2**62], [1, 4, 2**63]]),
    hostile,
)


@st.composite
def kserve_shape(draw, shape: list[int], right: bool) -> object:
    """The shape of a batch of 1 to 3, or (not ``right``) one with a dimension negative, zero or huge."""
    batch = [draw(st.integers(1, 3)), *shape]
    if right:
        return batch
    if draw(st.booleans()):
        batch[draw(st.integers(0, len(batch) - 1))] = draw(st.sampled_from([-1, 0, 129, *HUGE_DIMS]))
        return batch
    return draw(HOSTILE_SHAPES)


parameters = st.one_of(
    st.none(),
    st.sampled_from(
        [{"binary_data": True}, {"binary_data_output": True}, {"classification": 2}, {"binary_data": False}]
    ),
    st.dictionaries(
        st.sampled_from(["binary_data_size", "binary_data", "binary_data_output", "classification", "x"]),
        st.integers(-2, 64) | hostile,
        max_size=3,
    ),
    hostile,
)
SOME = st.integers(1, 3)  # faults, where the one site at fault has some
SITES = ["nothing", "data", "data", "shape", "tensor", "outputs", "parameters", "body"]


@st.composite
def kserve_bodies(draw, name: str, binary: bool = False) -> tuple[dict, bytes]:
    """A v2 request header right for the model but at one site (its data, shape, another field
    of the tensor, the outputs asked for, the parameters, the body), and the binary data that
    goes after it."""
    _, input_name, datatype, shape, outputs = MODELS[name]
    site = draw(st.sampled_from(SITES))
    tshape = draw(kserve_shape(shape, right=site != "shape"))
    sane = isinstance(tshape, list) and all(type(d) is int and 0 < d < 4096 for d in tshape)
    count = int(np.prod(tshape)) if sane else 1
    tensor: dict = {"name": input_name, "datatype": datatype, "shape": tshape}
    tail = b""
    if datatype == "BYTES":
        values = draw(st.lists(texts, min_size=count, max_size=count))
        if binary:
            encoded = [v.encode("utf-8", "surrogatepass") for v in values]
            tail = b"".join(len(v).to_bytes(4, "little") + v for v in encoded)
        else:
            tensor["data"] = values
    elif binary:
        values = np.full(count, draw(st.floats(-10, 10, width=32)), "<f4")
        for _ in range(draw(SOME) if site == "data" else 0):
            values[draw(st.integers(0, count - 1))] = draw(st.floats(width=32))
        tail = values.tobytes()
    else:
        values = draw(filled(count, SOME if site == "data" else st.just(0)))
        tensor["data"] = nested(values, tshape) if draw(st.booleans()) and sane else values
    if binary:
        tensor["parameters"] = {"binary_data_size": len(tail)}
    if site == "tensor":
        tensor = draw(mutated(tensor, ["name", "datatype", "shape", "data", "parameters"], SOME))
    body: dict = {"inputs": [tensor]}
    if draw(st.booleans()) or site == "outputs":
        wanted = [{"name": o} for o in outputs if draw(st.booleans())]
        if draw(st.booleans()):
            wanted[0:0] = [{"name": o, "parameters": {"classification": 2}} for o in outputs[:1]]
        if site == "outputs":
            wanted = draw(
                st.lists(st.fixed_dictionaries({}, optional={"name": hostile, "parameters": parameters}), max_size=3)
                | st.lists(st.fixed_dictionaries({"name": st.sampled_from(outputs), "parameters": parameters}))
                | hostile
            )
        body["outputs"] = wanted
    if site == "parameters":
        body["parameters"] = draw(parameters)
    elif draw(st.booleans()):
        body["parameters"] = {"binary_data_output": draw(st.booleans())}
    if draw(st.booleans()):
        body["id"] = draw(st.text(max_size=8) | hostile)
    if site == "body":
        body = draw(mutated(body, ["inputs", "outputs", "parameters"], SOME))
        if draw(st.booleans()):
            body["inputs"] = draw(st.sampled_from([[], [tensor, tensor], tensor, [None]]) | hostile)
    return body, tail


def kserve_path(name: str, version: str | None) -> str:
    return f"/v2/models/{name}/infer" if version is None else f"/v2/models/{name}/versions/{version}/infer"


KSERVE_MODELS = ["iris", "digits", "tagger", "diabetes", "digits-onnx"]


@fuzz(300)
@given(
    data=st.data(),
    name=st.sampled_from(KSERVE_MODELS),
    version=st.sampled_from([None, None, None, None, None, "1", "1", "x"]),
)
def test_kserve_infer_json(request, unhandled, data, name, version):
    client = request.getfixturevalue(MODELS[name][0])
    header = st.builds(lambda pair: pair[0], kserve_bodies(name))
    body = data.draw(json_bodies(header), label="body")
    response = client.post(kserve_path(name, version), data=body, content_type="application/json")
    answered_4xx(response, unhandled, body)


@st.composite
def binary_requests(draw, name: str) -> tuple[str, bytes]:
    """The binary extension: a JSON header, its length in Inference-Header-Content-Length
    (right, wrong or not a number), then raw bytes: the tensor's, cut or lengthened, random
    ones, or BYTES elements with lying length prefixes."""
    header, tail = draw(kserve_bodies(name, binary=True))
    text = json.dumps(header)
    while DEEP_JSON in text:
        text = text.replace(DEEP_JSON, draw(deep()), 1)
    head = text.encode()
    broken = draw(st.sampled_from(["nothing", "header", "tail", "length"]))  # one at a time
    if broken == "header":
        head = draw(json_bodies(st.just(header)))
    elif broken == "tail":
        tail = draw(
            st.one_of(
                st.sampled_from([tail[:-1], tail + b"\x00", tail[: len(tail) // 2]]),
                st.binary(max_size=64),
                st.sampled_from(
                    [b"\x00\x00\x80\x7f" * 4, b"\x00\x00\xc0\x7f" * 4, b"\xff\xff\xff\xff", b"\x05\x00\x00\x00ab"]
                ),
            )
        )
    length = str(len(head))
    if broken == "length":
        length = draw(
            st.integers(-3, len(head) + len(tail) + 3).map(str)
            | st.sampled_from(["", " 12", "0x10", "1e3", "+5", "１２", str(2**64), "-0", "nan"])
        )
    return length, head + tail


@fuzz(250)
@given(data=st.data(), name=st.sampled_from(KSERVE_MODELS))
def test_kserve_infer_binary(request, unhandled, data, name):
    client = request.getfixturevalue(MODELS[name][0])
    length, body = data.draw(binary_requests(name), label="request")
    response = client.post(
        kserve_path(name, None),
        data=body,
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": length},
    )
    answered_4xx(response, unhandled, (length, body))


# --- what the fuzzing found, pinned ---------------------------------------------------------------


def test_a_non_ascii_rfc2231_boundary_is_refused_not_a_500(client, unhandled):
    """``boundary*=utf-8''%E2%82%AC`` decodes to "€": the fast form-data split encoded it as
    latin-1 and raised (out of the WSGI middleware: no JSON, a traceback); Werkzeug, which
    takes ASCII boundaries only, finds no parts in it."""
    from inference.multipart import split_form_data

    content_type = "multipart/form-data; boundary*=utf-8''%E2%82%AC"
    body = '--€\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nx\r\n--€--\r\n'
    assert split_form_data(content_type, body.encode()) is None
    response = client.post("/predict", data=body.encode(), content_type=content_type)
    answered_4xx(response, unhandled, body)
    assert response.status_code == 400
    assert response.get_json()["code"] == "missing_field"


def test_text_with_a_lone_surrogate_is_refused_on_every_protocol(kinds_client, unhandled):
    """JSON's "\\ud800" escape decodes to a lone surrogate, which UTF-8 cannot encode: the text
    model's string tensor raised (500) instead of refusing the text."""
    text = "\ud800 words"  # json.dumps writes it as the escape "\\ud800 words"
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}
    requests = [
        ("/predict?model=tagger", {"text": text}, 422),
        ("/v1/models/tagger:predict", {"instances": [text]}, 400),
        ("/v1/models/tagger:predict", {"inputs": text}, 400),
        ("/v2/models/tagger/infer", {"inputs": [tensor]}, 400),
    ]
    for path, doc, status in requests:
        body = json.dumps(doc)
        assert "\\ud800" in body
        response = kinds_client.post(path, data=body, content_type="application/json")
        answered_4xx(response, unhandled, body)
        assert response.status_code == status, (path, response.get_data(as_text=True))
        assert "surrogate" in response.get_json()["error"]
    # Any other text is still served, not only ASCII.
    response = kinds_client.post("/predict?model=tagger", json={"text": "Zoë met Ωmega in 東京 🙂"})
    assert response.status_code == 200, response.get_data(as_text=True)


def test_kserve_fp_data_beyond_float64_is_400(multi_client, unhandled):
    """An integer of 400 digits as FP32 data: numpy's conversion raised OverflowError (500)."""
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 10**400]}
    body = json.dumps({"inputs": [tensor]})
    response = multi_client.post("/v2/models/iris/infer", data=body, content_type="application/json")
    answered_4xx(response, unhandled, body)
    assert response.status_code == 400
    assert "out of range" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("iris", [1, 2**62]),
        ("iris", [2**62, 4]),
        ("iris", [2**63, 4]),
        ("iris", [1, 4, 2**62]),
        ("tagger", [2**62]),
        ("tagger", [2**64, 1]),
        ("digits-onnx", [1, 1, 2**62, 2**62]),
    ],
)
def test_kserve_over_size_shapes_are_400(request, unhandled, name, shape):
    """A shape whose element count is beyond any body is refused from the shape itself: no
    allocation, no overflow."""
    client = request.getfixturevalue(MODELS[name][0])
    tensor = {"name": MODELS[name][1], "datatype": MODELS[name][2], "shape": shape, "data": [1.0] * 4}
    if name == "tagger":
        tensor["data"] = ["a"]
    response = client.post(f"/v2/models/{name}/infer", json={"inputs": [tensor]})
    answered_4xx(response, unhandled, tensor)
    assert response.status_code == 400
    binary = {**tensor, "parameters": {"binary_data_size": 16}}
    del binary["data"]
    header = json.dumps({"inputs": [binary]}).encode()
    response = client.post(
        f"/v2/models/{name}/infer",
        data=header + bytes(16),
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    answered_4xx(response, unhandled, binary)
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/predict", "image/png"),
        ("/predict", "multipart/form-data; boundary=b"),
        ("/v1/models/digits:predict", "application/json"),
        ("/v2/models/digits/infer", "application/json"),
        ("/v1/models/nothing:predict", "application/json"),
        ("/healthz", "application/json"),
    ],
)
def test_a_body_over_the_limit_is_413_on_every_route(client, unhandled, path, content_type):
    """The app reads an unneeded body to its end before answering; for a body declared over
    the limit Werkzeug refuses even to open it, and that refusal, raised in the after-request
    hook, turned the 413 (or 404, 405) into a 500."""
    response = client.post(path, data=b"x" * (2 * 1024 * 1024 + 1), content_type=content_type)
    answered_4xx(response, unhandled, path)
    assert response.status_code in (404, 405, 413)
