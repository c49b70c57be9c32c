"""The listing a build keeps: the images found, as one compact, columnar sequence of source items.

A build holds its listing for its whole run: 52,224 images for a full BBBC006 plate, 10 M for the
users' next plates. As one :class:`~indexer.images.sources.SourceItem` per image, with its reader and its
metadata, that is four objects (~200 B) per image besides the path. A :class:`SourceList` keeps:

- the display paths as a list of ``str`` (the build's records share these very objects);
- each metadata field as a small-int code into a table of the distinct values the listing holds
  (one plate name, 384 wells, 34 z-slices, one tags tuple per distinct row of a metadata table);
- a reader code: nothing for a plain file read at its display path, the archive for a zip member
  (whose name is the end of its display path), and a sparse side table for any other reader (a file
  opened by another path string than the one shown, a reader a caller made).

About 10 B per image besides the path string. Indexing gives the item back, equal to the one listed.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from typing import overload

import numpy as np

from indexer.core.records import ImageMeta
from indexer.core.value_codes import ValueCodes
from indexer.images.sources import FileReader, SourceItem, ZipMemberReader

#: The metadata fields, in :class:`ImageMeta`'s order (its constructor takes them so).
_FIELDS = tuple(f.name for f in fields(ImageMeta))
#: Reader table entry 0: read the file at the display path (no per-image reader stored).
_PLAIN = None
#: Reader table entry: the item's own reader is in the side table (compared by identity).
_OWN = "own"
#: Items made at a time while iterating (their codes read as one block).
_CHUNK = 4096
#: Code widths, narrowest first: a column widens when a code outgrows its type.
_WIDER = {"B": "H", "H": "I", "I": "Q"}


class SourceList(Sequence[SourceItem]):
    """A listing as a read-only sequence of :class:`~indexer.images.sources.SourceItem`: ``len``, indexing
    (negative indices too), slicing (a new :class:`SourceList`), iteration, as a list of the items.

    Build one with :meth:`collect`; the items are made again on each access (equal to those
    collected: the same path object, equal metadata, a reader of the same bytes).
    """

    __slots__ = ("_paths", "_codes", "_values", "_readers", "_own")

    def __init__(
        self,
        paths: list[str],
        codes: np.ndarray,
        values: tuple[tuple, ...],
        readers: tuple,
        own: dict[int, Callable[[], bytes]],
    ) -> None:
        self._paths = paths
        self._codes = codes  # structured: one small unsigned int per metadata field, then the reader
        self._values = values  # per metadata field, its distinct values (a code indexes them)
        self._readers = readers  # _PLAIN, _OWN, or (zip archive, where the member name starts in the path)
        self._own = own  # index -> the item's own reader, for items whose reader code is _OWN

    @classmethod
    def collect(cls, items: Iterable[SourceItem]) -> SourceList:
        """The items of ``items`` (an iterator is consumed once; nothing per item is kept but the codes).

        A :class:`SourceList` is returned as it is.
        """
        if isinstance(items, SourceList):
            return items
        builder = _Builder()
        for item in items:
            builder.add(item)
        return builder.finish()

    def __len__(self) -> int:
        return len(self._paths)

    @overload
    def __getitem__(self, index: int) -> SourceItem: ...

    @overload
    def __getitem__(self, index: slice) -> SourceList: ...

    def __getitem__(self, index: int | slice) -> SourceItem | SourceList:
        if isinstance(index, slice):
            return self._slice(index)
        i = operator.index(index)
        n = len(self._paths)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"listing index {index} out of range ({n} images)")
        return self._item(i, self._codes[i].item())

    def __iter__(self) -> Iterator[SourceItem]:
        for start in range(0, len(self._paths), _CHUNK):
            rows = self._codes[start : start + _CHUNK].tolist()
            for i, row in enumerate(rows, start):
                yield self._item(i, row)

    def __repr__(self) -> str:
        return f"SourceList({len(self)} images)"

    def _item(self, i: int, row: tuple[int, ...]) -> SourceItem:
        path = self._paths[i]
        meta = ImageMeta(*[values[code] for values, code in zip(self._values, row)])
        reader = self._readers[row[-1]]
        if reader is _PLAIN:
            read: Callable[[], bytes] = FileReader(path)
        elif reader is _OWN:
            read = self._own[i]
        else:
            archive, start = reader
            read = archive.reader(path[start:])
        return SourceItem(path, read, meta)

    def _slice(self, s: slice) -> SourceList:
        picked = range(len(self._paths))[s]
        own = {picked.index(i): r for i, r in self._own.items() if i in picked}
        # A copy of the codes, so that a small slice does not keep a large listing's codes alive.
        return SourceList(self._paths[s], self._codes[s].copy(), self._values, self._readers, own)


class _Column:
    """Codes appended one at a time, in the narrowest unsigned type that holds them all."""

    __slots__ = ("codes",)

    def __init__(self) -> None:
        self.codes = array("B")

    def append(self, code: int) -> None:
        try:
            self.codes.append(code)
        except OverflowError:
            self.codes = array(_WIDER[self.codes.typecode], self.codes)
            self.append(code)


class _Table:
    """One column's codes and its distinct values."""

    __slots__ = ("distinct", "column")

    def __init__(self, *first) -> None:
        self.distinct = ValueCodes(first)  # values coded before any is added (a reader table's _PLAIN is 0)
        self.column = _Column()

    @property
    def values(self) -> list:
        """The distinct values, by code."""
        return self.distinct.values

    def add(self, value) -> None:
        self.column.append(self.distinct.code(value))


class _Builder:
    """Appends items to the columns of a :class:`SourceList` while a listing runs."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.tables = [_Table() for _ in _FIELDS]
        self.readers = _Table(_PLAIN)
        self.own: dict[int, Callable[[], bytes]] = {}

    def add(self, item: SourceItem) -> None:
        path, read, meta = item.path, item.read, item.meta
        for table, name in zip(self.tables, _FIELDS):
            table.add(getattr(meta, name))
        if type(read) is FileReader and read.path == path:
            self.readers.add(_PLAIN)
        elif type(read) is ZipMemberReader and path.endswith(read.member):
            self.readers.add((read.archive, len(path) - len(read.member)))
        else:
            self.own[len(self.paths)] = read
            self.readers.add(_OWN)
        self.paths.append(path)

    def finish(self) -> SourceList:
        columns = [*self.tables, self.readers]
        dtype = np.dtype([(name, np.dtype(t.column.codes.typecode))
                          for name, t in zip((*_FIELDS, "reader"), columns)])  # fmt: skip
        codes = np.empty(len(self.paths), dtype)
        for name, table in zip(dtype.names, columns):
            if len(self.paths):
                codes[name] = np.frombuffer(table.column.codes, dtype[name])
            table.column = _Column()  # each column's buffer freed as soon as it is copied
        values = tuple(tuple(t.values) for t in self.tables)
        return SourceList(self.paths, codes, values, tuple(self.readers.values), self.own)
