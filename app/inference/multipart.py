"""A fast path for the multipart uploads /predict takes: a handful of form-data parts (one image,
maybe a ``model`` field), split with ``bytes.find`` instead of Werkzeug's general streaming
parser, which took a fifth of a small model's request CPU (bench/profile_request.py).

Anything it does not recognise plainly (a part with headers other than Content-Disposition and
Content-Type, a malformed delimiter or header) returns None, and the caller falls back to
Werkzeug, so every upload Werkzeug accepts is still accepted and judged the same way.
"""

from __future__ import annotations

import re

from werkzeug.http import parse_options_header

Parts = dict[str, list[tuple[str | None, bytes]]]
_KNOWN_HEADERS = {"content-disposition", "content-type"}

# The parameters nearly every client sends (`; name="image"; filename="7.png"`, `; boundary=x`):
# keys and tokens without `%` or `*`, quoted values without `\`, `%` or a line break, so none of
# Werkzeug's unescaping, `%22` or RFC 2231 rules can apply. Werkzeug's general parser scans quoted
# values a character at a time in Python: a tenth of the fast path's CPU on a small model.
_KEY = r"[A-Za-z0-9_!#$&'+\-.^`|~]+"
_VALUE = r"""(?:"([^"\\%\r\n]*)"|([A-Za-z0-9_!#$&'+\-.^`|~*]+))"""
_PARAM = re.compile(rf"({_KEY})={_VALUE}")
_PLAIN_PARAMS = re.compile(rf"[ \t]*{_KEY}={_VALUE}(?:[ \t]*;[ \t]*{_KEY}={_VALUE})*[ \t]*")


def options_header(value: str) -> tuple[str, dict[str, str]]:
    """What Werkzeug's ``parse_options_header`` returns for ``value``, by a regular expression
    when the parameters are plain, by Werkzeug's parser when they are not."""
    head, _sep, rest = value.partition(";")
    head = head.strip(" \t")
    if head and _PLAIN_PARAMS.fullmatch(rest):
        return head, {key.lower(): quoted or token for key, quoted, token in _PARAM.findall(rest)}
    return parse_options_header(value)


def split_form_data(content_type: str, body: bytes) -> Parts | None:
    """name -> [(filename or None, content)] in body order, or None to let Werkzeug parse it."""
    mimetype, options = options_header(content_type)
    boundary = options.get("boundary")
    # Werkzeug takes ASCII boundaries only (an RFC 2231 ``boundary*=utf-8''%E2%82%AC`` is not one).
    if mimetype != "multipart/form-data" or not boundary or not boundary.isascii():
        return None
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        return None
    parts: Parts = {}
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            return None
        head, sep, content = chunk[2:-2].partition(b"\r\n\r\n")
        if not sep:
            return None
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            key, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                return None
            headers[key.strip().lower()] = value.strip()
        if not set(headers) <= _KNOWN_HEADERS:
            return None
        disposition, params = options_header(headers.get("content-disposition", ""))
        if disposition != "form-data" or "name" not in params:
            return None
        parts.setdefault(params["name"], []).append((params.get("filename"), content))
    return parts


def form_fields(parts: Parts, name: str) -> list[str]:
    """The plain (not file) form fields called ``name``, decoded, in body order."""
    return [content.decode("utf-8", "replace") for filename, content in parts.get(name, []) if filename is None]


def files(parts: Parts, name: str) -> list[bytes]:
    """The uploaded files called ``name``, in body order."""
    return [content for filename, content in parts.get(name, []) if filename is not None]
