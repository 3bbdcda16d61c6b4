"""Bytes on the wire: an image as a client uploads it, a value from a Prometheus scrape."""

from __future__ import annotations

import io

from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def counter(text: str, name: str, **labels: str) -> float:
    """The value of the first sample of ``name`` with these labels in exposition ``text``, 0 if none."""
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
