"""Distinct values, each with a small-int code: how the build's columnar tables (the listing,
:mod:`indexer.images.source_list`, and the FAISS store's records, :mod:`indexer.stores.record_table`) hold the
strings a plate repeats (one plate name, 384 wells, 2 channels) once instead of once per image."""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class ValueCodes:
    """Distinct values, each coded by the order it first came in (``values[code]`` gives it back)."""

    __slots__ = ("values", "_code")

    def __init__(self, first: Iterable[Hashable] = ()) -> None:
        self.values: list = list(first)  # values coded before any other (e.g. a reader table's "plain" is 0)
        self._code = {value: code for code, value in enumerate(self.values)}

    def code(self, value: Hashable) -> int:
        """The code of ``value`` (a new one the first time)."""
        code = self._code.get(value)
        if code is None:
            code = self._code[value] = len(self.values)
            self.values.append(value)
        return code
