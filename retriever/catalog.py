"""What the explorer knows of the served index: its records, their facets, one record's siblings, the
plate map's layout and vectors. Loaded on first use; the served index does not change while served.

The plate map reads the vectors of the plate it is asked for, not of the index: a map is one plate's
(52,224 images for BBBC006), while the index may hold ~190 plates (10 M images, 30 GB of 768-d vectors).
The plates asked for last are kept, within a byte budget (:data:`PLATE_CACHE_BYTES`).

Why columns: the records are the index's (52,224 for a full plate, 10 M for the plates users plan). A
dict of one :class:`~indexer.core.records.ImageRecord` per image held ~185 B per record beside the store's
own, and answering a record's siblings scanned all of them per request. Here the records are a
:class:`~indexer.stores.record_table.RecordTable`: the FAISS store's own (no copy at all), or, for a
store without one (Redis), its records read into one a chunk at a time. Facets and the plate layout are
counted from its columns; siblings and the live panel's relatives come from one index of the ids sorted
by (plate, well, site): a binary search, then the size of the group.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import numpy as np

from indexer.core.records import ImageRecord
from indexer.stores.base import VectorStore
from indexer.stores.record_table import CODED_FIELDS, NO_INT, RecordTable
from retriever.http.app import ClientError
from retriever.lru import SizedLRU

ROWS = "ABCDEFGHIJKLMNOP"
COLUMNS = 24
#: The fields a record's group is keyed by, in this order: a site is (plate, well, site), a well its prefix.
GROUP_KEYS = ("plate", "well", "site")
#: The fields :meth:`Catalog.facets` counts.
FACET_FIELDS = ("plate", "well", "site", "channel", "z")
#: Records read from a store without a record table per request to it.
READ_CHUNK = 10_000
#: The plate map's vectors kept between requests: about three full BBBC006 plates at 768-d (160 MB each).
PLATE_CACHE_BYTES = 512 * 2**20


def _facet_order(value: Any) -> tuple:
    # Values sorted, None last; types apart (an int and a str never compare).
    return (value is None, str(type(value)), value or 0)


def _cell(well: str | None) -> int:
    """The plate cell (row * 24 + column) of a well name such as ``B03``; -1 for none or another shape."""
    if not well:
        return -1
    row = ROWS.find(well[0])
    try:
        col = int(well[1:]) - 1
    except ValueError:
        return -1
    return row * COLUMNS + col if 0 <= row < len(ROWS) and 0 <= col < COLUMNS else -1


def _codes_by_first_sight(
    table: RecordTable, field: str, raw: np.ndarray
) -> tuple[np.ndarray, dict[str, int]]:
    """Codes 0, 1, ... for the values of ``raw`` (a coded column's raw entries), numbered in the order
    they first occur in it; -1 for None and ""."""
    distinct, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    values = table.decode(field, distinct)
    names: dict[str, int] = {}
    code = np.full(len(distinct), -1, dtype=np.int32)
    for u in np.argsort(first, kind="stable").tolist():
        if values[u]:
            code[u] = names.setdefault(values[u], len(names))
    return code[inverse.reshape(-1)], names


class _Groups:
    """Ids sorted by a key of a few int columns (then by id), with where each distinct key starts: the ids
    sharing a key, or a prefix of it, are one slice, found by binary search level by level."""

    def __init__(self, ids: np.ndarray, keys: Sequence[np.ndarray]) -> None:
        order = np.lexsort((ids, *reversed(keys)))  # lexsort's last key sorts first
        self.ids = ids[order]
        change = np.zeros(len(ids), dtype=bool)
        change[:1] = True
        ordered = []
        for key in keys:
            key = key[order]
            change[1:] |= key[1:] != key[:-1]
            ordered.append(key)
        starts = np.flatnonzero(change)
        self.keys = [key[starts] for key in ordered]  # one row per distinct key, sorted
        self.bounds = np.append(starts, len(ids))

    def members(self, key: Sequence[int]) -> np.ndarray:
        """Ids whose first ``len(key)`` columns equal ``key``, in key order then by id."""
        lo, hi = 0, len(self.bounds) - 1
        for level, value in enumerate(key):
            # Within [lo, hi) every earlier column is equal, so this one is sorted.
            column = self.keys[level][lo:hi]
            lo, hi = (
                lo + int(np.searchsorted(column, value, "left")),
                lo + int(np.searchsorted(column, value, "right")),
            )
        return self.ids[self.bounds[lo] : self.bounds[hi]]


def record_table(
    store: VectorStore, chunk: int = READ_CHUNK, mirror: VectorStore | None = None
) -> RecordTable:
    """The records of ``store`` in columns: its own table where it keeps one (``record_table``, the FAISS
    store); else the table of ``mirror`` (its FAISS mirror) where that holds exactly ``store``'s ids;
    else ``store``'s records read into a new table ``chunk`` at a time.

    Why the mirror's: a Redis index and its mirror are one index (one ``index_uid``), so the same ids are
    the same records, and reading them from Redis would make a second copy (~150 B per image with its
    path). A mirror with other ids (behind its Redis index) is not used: the searched store decides.
    """
    table = getattr(store, "record_table", None)
    if isinstance(table, RecordTable):
        return table
    ids = store.ids()
    mirrored = getattr(mirror, "record_table", None)
    if isinstance(mirrored, RecordTable) and np.array_equal(mirror.ids(), ids):  # both sorted
        return mirrored
    table = RecordTable()
    for start in range(0, len(ids), chunk):
        table.put([r for r in store.get(ids[start : start + chunk]) if r is not None])
    table.seal()
    return table


class _PlateVectors:
    """One plate's rows of the layout that have a well cell, in cell order, their vectors, and where each
    cell's rows start."""

    def __init__(self, rows: np.ndarray, cells: np.ndarray, vectors: np.ndarray) -> None:
        self.rows = rows
        self.vectors = vectors
        # Rows grouped by well once, so a query's per-well maximum is one reduceat (np.maximum.at is ~10x slower).
        self.starts = np.flatnonzero(np.r_[len(cells) > 0, np.diff(cells) != 0])
        self.start_cells = cells[self.starts]

    @property
    def nbytes(self) -> int:
        """Bytes held (the vectors, and the rows and groups beside them)."""
        return self.vectors.nbytes + self.rows.nbytes + self.starts.nbytes + self.start_cells.nbytes


class Catalog:
    """The index's records and, for the plate map, one plate's vectors at a time: loaded on first use.

    ``vectors`` come from ``vector_store`` (the FAISS mirror when there is one: an in-memory copy,
    exact, no round trips), else from the searched store; the records are the searched store's
    (:func:`record_table`: its own table, the mirror's where it holds the same ids, or read ``read_chunk``
    at a time). The plates whose vectors were read last are kept within ``plate_cache_bytes``.
    """

    def __init__(self, store: VectorStore, vector_store: VectorStore | None = None,
                 read_chunk: int = READ_CHUNK, plate_cache_bytes: int = PLATE_CACHE_BYTES) -> None:  # fmt: skip
        self.store = store
        self.vector_store = vector_store or store
        self.read_chunk = read_chunk
        self._lock = threading.Lock()
        self._plate_lock = threading.Lock()  # one reader of a plate's vectors at a time, not one per request
        self._table: RecordTable | None = None
        self._groups: _Groups | None = None
        self._ids: np.ndarray | None = None
        self._layout: dict[str, Any] | None = None
        self._facets: dict[str, Any] | None = None
        self._plates = SizedLRU(plate_cache_bytes, sizeof=lambda plate: plate.nbytes)

    @property
    def records(self) -> RecordTable:
        """id -> record of every indexed image: a read-only ``Mapping`` that makes records on access."""
        with self._lock:
            if self._table is None:
                mirror = self.vector_store if self.vector_store is not self.store else None
                self._table = record_table(self.store, self.read_chunk, mirror)
            return self._table

    def record(self, image_id: int) -> ImageRecord:
        """The record of an indexed id (404 otherwise)."""
        rec = self.records.get(image_id)
        if rec is None:
            raise ClientError(HTTPStatus.NOT_FOUND, f"id {image_id} is not in the index")
        return rec

    def _group_index(self) -> _Groups:
        table = self.records
        with self._lock:
            if self._groups is None:
                columns = table.columns(("id", *GROUP_KEYS))
                self._groups = _Groups(columns.pop("id"), [columns[k] for k in GROUP_KEYS])
            return self._groups

    def relatives(self, image_id: int, keys: Sequence[str]) -> np.ndarray | None:
        """Ids of the indexed images equal to ``image_id`` on ``keys`` (itself included), in the size of
        that group: ``None`` where the image is not indexed or one of its ``keys`` is unknown (None).

        Parameters
        ----------
        keys
            A prefix of :data:`GROUP_KEYS`: ``("plate", "well", "site")`` (its site) or ``("plate",
            "well")`` (its well).

        Raises
        ------
        ValueError
            ``keys`` is not such a prefix.
        """
        keys = tuple(keys)
        if not keys or keys != GROUP_KEYS[: len(keys)]:
            raise ValueError(f"relatives are grouped by a prefix of ({', '.join(GROUP_KEYS)}), not {keys}")
        return self._members(image_id, keys, unknown_is_none=True)

    def _members(self, image_id: int, keys: tuple[str, ...], unknown_is_none: bool) -> np.ndarray | None:
        """Ids equal to ``image_id`` on ``keys`` (a prefix of :data:`GROUP_KEYS`), from the group index.
        With ``unknown_is_none`` a key the image lacks gives ``None``; otherwise None matches None."""
        groups = self._group_index()
        columns = self.records.columns(keys, ids=[image_id])
        key = [int(columns[k][0]) for k in keys]
        if unknown_is_none and any(v == (-1 if k in CODED_FIELDS else NO_INT) for k, v in zip(keys, key)):
            return None  # two unknown wells are not the same well
        return groups.members(key)

    def ids(self) -> np.ndarray:
        """The ids of every image of the vector store, sorted: the rows of :meth:`layout`."""
        with self._lock:
            if self._ids is None:
                self._ids = np.sort(np.asarray(self.vector_store.ids(), dtype=np.int64))
            return self._ids

    def vector(self, image_id: int) -> np.ndarray:
        """The stored vector of an indexed image (404 where the vector store has none)."""
        try:
            return np.asarray(
                self.vector_store.get_vectors(np.array([image_id], dtype=np.int64))[0], np.float32
            )
        except KeyError:
            raise ClientError(HTTPStatus.NOT_FOUND, f"id {image_id} has no stored vector") from None

    def facets(self) -> dict[str, Any]:
        """Counts per plate, well, site, channel and z (values sorted; missing metadata as ``null``).

        Computed once, from the record columns: the served index does not change while it is served.
        """
        if self._facets is not None:
            return self._facets
        table = self.records
        columns = table.columns(FACET_FIELDS)
        out = {}
        for f in FACET_FIELDS:
            raw, counts = np.unique(columns[f], return_counts=True)
            count = dict(zip(table.decode(f, raw), counts.tolist()))
            out[f] = [{"value": v, "count": count[v]} for v in sorted(count, key=_facet_order)]
        self._facets = {"count": len(table), **out}
        return self._facets

    def layout(self) -> dict[str, Any]:
        """Per id of :meth:`ids`: plate well cell (row * 24 + column, -1 if none), plate, channel, site
        (codes into ``plate_names`` / ``channel_names``, numbered as the sorted ids first name them)."""
        with self._lock:
            if self._layout is not None:
                return self._layout
        ids = self.ids()
        table = self.records
        columns = table.columns(("plate", "well", "channel", "site"), ids=ids)  # an id not held: all None
        plate, plate_names = _codes_by_first_sight(table, "plate", columns["plate"])
        channel, channel_names = _codes_by_first_sight(table, "channel", columns["channel"])
        site = np.where(columns["site"] == NO_INT, -1, columns["site"]).astype(np.int32)
        wells, inverse = np.unique(columns["well"], return_inverse=True)
        cell = np.array([_cell(w) for w in table.decode("well", wells)], dtype=np.int32)[inverse.reshape(-1)]
        counts = np.bincount(plate[plate >= 0], minlength=len(plate_names))
        common = max(plate_names, key=lambda p: counts[plate_names[p]]) if plate_names else None
        layout = {"cell": cell, "plate": plate, "channel": channel, "site": site, "plate_names": plate_names,
                  "channel_names": channel_names, "default_plate": common}  # fmt: skip
        with self._lock:
            self._layout = layout
        return layout

    def siblings(self, image_id: int) -> dict[str, Any]:
        """The record, the other channels of its site and z, and its z stack (same site and channel).

        Read from its site's group (same plate, well and site; None equal to None, as values), not from
        every record: the cost is the size of the site.
        """
        rec = self.record(image_id)
        same_site: list[ImageRecord] = []
        if rec.well is not None:
            members = self._members(image_id, GROUP_KEYS, unknown_is_none=False)
            same_site = [r for r in self.records.get_many(members) if r is not None]  # in id order
        others = sorted(
            (r for r in same_site if r.z == rec.z and r.channel != rec.channel), key=lambda r: str(r.channel)
        )
        stack = sorted(
            (r for r in same_site if r.channel == rec.channel and r.z is not None), key=lambda r: r.z
        )
        if not stack:
            stack = [rec]
        return {
            "record": rec.to_dict(),
            "other_channels": [r.to_dict() for r in others],
            "stack": [{"id": r.id, "z": r.z} for r in stack],
        }

    def plate_map(
        self, query: np.ndarray, plate: str | None, channels: tuple[str, ...], sites: tuple[int, ...]
    ) -> dict[str, Any]:
        """Best cosine similarity per well of a 384-well plate (``None`` for wells with no image).

        Only images of ``plate`` (default: the only or the most common plate) and of the given channels
        and sites count.
        """
        lay = self.layout()
        plate = plate if plate is not None else lay["default_plate"]
        on_plate = self._plate_vectors(lay["plate_names"].get(plate, -1))
        rows = on_plate.rows
        keep = np.ones(len(rows), dtype=bool)
        if channels:
            keep &= np.isin(lay["channel"][rows], [lay["channel_names"].get(c, -2) for c in channels])
        if sites:
            keep &= np.isin(lay["site"][rows], list(sites))
        q = np.asarray(query, np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        # All of the plate's rows then mask: a masked copy of its vectors would cost more than the product.
        scores = np.where(keep, on_plate.vectors @ q, -np.inf).astype(np.float32)
        best = np.full(len(ROWS) * COLUMNS, -np.inf, dtype=np.float32)
        counts = np.bincount(lay["cell"][rows][keep], minlength=len(best))
        if len(rows):
            best[on_plate.start_cells] = np.maximum.reduceat(scores, on_plate.starts)
        wells = {}
        for c in range(len(best)):
            well = f"{ROWS[c // COLUMNS]}{c % COLUMNS + 1:02d}"
            wells[well] = None if counts[c] == 0 else round(float(best[c]), 6)
        return {
            "plate": plate,
            "rows": list(ROWS),
            "columns": COLUMNS,
            "wells": wells,
            "images": {w: int(counts[i]) for i, w in enumerate(wells) if counts[i]},
        }

    def _plate_vectors(self, code: int) -> _PlateVectors:
        """The rows of plate ``code`` (-1: none) that have a well cell, and their vectors: read from the
        vector store on first use, then kept while within the budget."""
        with self._plate_lock:
            held = self._plates.get(code)
            if held is not None:
                return held
            lay = self.layout()
            rows = np.flatnonzero((lay["plate"] == code) & (lay["cell"] >= 0) if code >= 0 else [])
            rows = rows[np.argsort(lay["cell"][rows], kind="stable")]  # read in cell order: no copy to sort
            vectors = np.ascontiguousarray(self.vector_store.get_vectors(self.ids()[rows]), np.float32)
            held = _PlateVectors(rows, lay["cell"][rows], vectors)
            self._plates.put(code, held)
            return held
