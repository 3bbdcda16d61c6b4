"""Watching what Flask itself handled."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, request_started


@contextmanager
def flask_requests(app: Flask) -> Iterator[list[str]]:
    """Counts the requests Flask itself handled (the fast path's never reach it)."""
    seen: list[str] = []

    def receiver(sender, **_extra):
        seen.append("request")

    with request_started.connected_to(receiver, app):
        yield seen
