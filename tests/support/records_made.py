"""Counting the ``ImageRecord`` objects code makes: how tests show that a step reads record columns
instead of one record object per indexed image."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from indexer.core.records import ImageRecord


@contextmanager
def records_made(monkeypatch) -> Iterator[list[int]]:
    """A list that holds one entry per ``ImageRecord`` made inside the ``with`` block."""
    made: list[int] = []
    post_init = ImageRecord.__post_init__

    def counted(self) -> None:
        made.append(1)
        post_init(self)

    monkeypatch.setattr(ImageRecord, "__post_init__", counted)
    try:
        yield made
    finally:
        monkeypatch.setattr(ImageRecord, "__post_init__", post_init)
