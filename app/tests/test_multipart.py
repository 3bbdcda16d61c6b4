"""The fast form-data split gives what Werkzeug's parser gives, or hands the body back to it."""

from __future__ import annotations

import io

import pytest
import requests
from werkzeug.http import parse_options_header
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from inference.multipart import options_header, split_form_data


def encoded(files=None, data=None) -> tuple[str, bytes]:
    """A body as requests (urllib3) encodes it, the way most clients send uploads."""
    prepared = requests.Request("POST", "http://x/predict", files=files, data=data).prepare()
    return prepared.headers["Content-Type"], prepared.body


def werkzeug_view(content_type: str, body: bytes) -> dict:
    env = EnvironBuilder(method="POST", input_stream=io.BytesIO(body), content_type=content_type).get_environ()
    env["CONTENT_LENGTH"] = str(len(body))
    request = Request(env)
    view: dict = {}
    for name, value in request.form.items(multi=True):
        view.setdefault(name, []).append((None, value.encode()))
    for name, upload in request.files.items(multi=True):
        view.setdefault(name, []).append((upload.filename, upload.read()))
    return view


@pytest.mark.parametrize(
    ("files", "data"),
    [
        ({"image": ("7.png", b"\x89PNG\r\n\x1a\n\x00--not a boundary\r\n\r\n")}, None),
        ({"image": ("a.png", b"first")}, {"model": "iris", "version": "2"}),
        ([("image", ("a.png", b"one")), ("image", ("b.png", b"two"))], None),
        ({"image": ("", b"")}, None),
    ],
)
def test_same_parts_as_werkzeug(files, data):
    content_type, body = encoded(files, data)
    assert split_form_data(content_type, body) == werkzeug_view(content_type, body)


def test_unusual_parts_go_to_werkzeug():
    content_type, body = encoded({"image": ("a.png", b"x")})
    boundary = content_type.split("boundary=")[1]
    extra = body.replace(b'filename="a.png"\r\n', b'filename="a.png"\r\nContent-Transfer-Encoding: base64\r\n', 1)
    assert extra != body
    assert split_form_data(content_type, extra) is None
    assert split_form_data(content_type, body[: len(body) // 2]) is None  # truncated
    assert split_form_data(f"multipart/form-data; boundary={boundary}x", body) is None
    assert split_form_data("application/json", body) is None


@pytest.mark.parametrize(
    "value",
    [
        'form-data; name="image"; filename="7.png"',
        "multipart/form-data; boundary=a1b2c3",
        'multipart/form-data; boundary="quoted-boundary"',
        'form-data; Name="x"; NAME="y"',
        'form-data; filename="a;b=c.png"; name="image"',
        'form-data;name="image";filename="x y.png"  ',
        "form-data; filename*=UTF-8''%e2%82%ac.png; name=image",
        'form-data; name="image"; filename*0="a"; filename*1="b.png"',
        'form-data; name="a\\"b"',
        'form-data; name="a\\\\b"',
        'form-data; name="a%22b"',
        "form-data; name=a%22b",
        'form-data; name=""',
        'form-data; name=x junk; filename="f"',
        'form-data; name="unterminated',
        "form-data; =x",
        "form-data;",
        " ; name=x",
        "text/plain",
        "",
        'form-data; name="caf\u00e9.png"',
    ],
)
def test_options_header_reads_as_werkzeug_does(value):
    """The regular-expression path gives Werkzeug's answer exactly, or hands the header to it."""
    assert options_header(value) == parse_options_header(value)
