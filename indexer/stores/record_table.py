"""The records of a FAISS folder in columns, with where each one's current vector lies (shard, row).

Why columns: a store holds every record of its folder in memory (52,224 for a full plate; the plates
users plan hold 10 M), a writer and a server alike. One :class:`~indexer.core.records.ImageRecord` per
image in a dict, beside a second dict of ``(shard, row)``, cost ~550 B per image over its path string.
Here a record is one row of a numpy structured array (an int64 id, small-int codes for the strings a
plate repeats and for tags, int32 column/site/z, its shard and row: 53 B) and a path string in a list;
an id finds its row by binary search in a sorted copy of the ids, plus a dict for the rows added since
that copy was made. ``ImageRecord`` objects are made when asked for (``get``, search hits).

A row is never changed, only superseded: an upsert appends a new row and marks the old one dead, a
delete marks it dead; dead rows are dropped when the lookup copy is rebuilt and they are many.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from indexer.core.records import TRIM, ImageRecord, MetadataFilter, normalise_tags, tag_strings, tags_match
from indexer.core.value_codes import ValueCodes

#: The string fields stored as codes into one table of distinct values (-1: None). Paths are distinct.
CODED_FIELDS = ("plate", "well", "row", "channel", "source")
#: The int fields (:data:`NO_INT`: None).
INT_COLUMNS = ("column", "site", "z")
NO_INT = np.iinfo(np.int32).min
#: Where a row not yet written to a shard lies.
PENDING = -1

_ROW = np.dtype(
    [("id", np.int64), ("shard", np.int32), ("shard_row", np.int32), ("live", np.bool_)]
    + [(f, np.int32) for f in CODED_FIELDS]
    + [(f, np.int32) for f in INT_COLUMNS]
    + [("tags", np.int32)]
)
#: Rows added since the sorted lookup copy, past which it is rebuilt (and at least this fraction of it).
_RECENT_MIN, _RECENT_FRACTION = 4096, 4


class RecordTable(Mapping[int, ImageRecord]):
    """Every live record of a folder, by id, and where its vector lies. A read-only ``Mapping`` to
    :class:`ImageRecord` (records are made on access); changed with :meth:`put`, :meth:`pop` and
    :meth:`place`."""

    def __init__(self, records: Iterable[ImageRecord] = ()) -> None:
        self._rows = np.zeros(1024, dtype=_ROW)
        self._paths: list[str | None] = []
        self._n = 0
        self._live = 0
        self._strings = ValueCodes()
        self._tags = ValueCodes([()])
        self._shards = ValueCodes()
        self._sorted_ids = np.zeros(0, dtype=np.int64)  # live ids when last rebuilt, sorted...
        self._sorted_rows = np.zeros(0, dtype=np.int64)  # ...and their rows
        self._recent: dict[int, int] = {}  # id -> row, for rows added since
        self.put(list(records))

    # ------------------------------------------------------------------ lookups
    def _row_of(self, image_id: int) -> int:
        """The live row of ``image_id``, or -1."""
        row = self._recent.get(image_id)
        if row is None:
            at = int(np.searchsorted(self._sorted_ids, image_id))
            if at == len(self._sorted_ids) or self._sorted_ids[at] != image_id:
                return -1
            row = int(self._sorted_rows[at])
        return row if self._rows["live"][row] else -1

    def rows_of(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The live row of each of ``ids`` (-1 where absent), vectorised over the sorted copy."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = np.full(len(ids), -1, dtype=np.int64)
        if len(self._sorted_ids):
            at = np.minimum(np.searchsorted(self._sorted_ids, ids), len(self._sorted_ids) - 1)
            hit = self._sorted_ids[at] == ids
            rows[hit] = self._sorted_rows[at[hit]]
        if self._recent:
            for pos, image_id in enumerate(ids.tolist()):
                row = self._recent.get(image_id)
                if row is not None:
                    rows[pos] = row
        found = rows >= 0
        dead = found.copy()
        dead[found] = ~self._rows["live"][rows[found]]
        rows[dead] = -1
        return rows

    def contains(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Whether each of ``ids`` is held (a bool array)."""
        return self.rows_of(ids) >= 0

    def __contains__(self, image_id: object) -> bool:
        try:
            return self._row_of(int(image_id)) >= 0  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def __getitem__(self, image_id: int) -> ImageRecord:
        row = self._row_of(int(image_id))
        if row < 0:
            raise KeyError(image_id)
        return self._record(row)

    def get(self, image_id: int, default=None):  # type: ignore[override]
        """The record of ``image_id``, or ``default``."""
        row = self._row_of(int(image_id))
        return default if row < 0 else self._record(row)

    def get_many(self, ids: Sequence[int] | np.ndarray) -> list[ImageRecord | None]:
        """The records of ``ids`` (``None`` where absent), looked up in one pass."""
        return [None if row < 0 else self._record(row) for row in self.rows_of(ids).tolist()]

    def __len__(self) -> int:
        return self._live

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids_in_row_order().tolist())

    def records(self) -> Iterator[ImageRecord]:
        """Every live record, in the order rows were added."""
        return (self._record(row) for row in np.flatnonzero(self._rows["live"][: self._n]).tolist())

    def values(self):  # type: ignore[override]
        """Every live record (:meth:`records`)."""
        return list(self.records())

    def _ids_in_row_order(self) -> np.ndarray:
        rows = self._rows[: self._n]
        return rows["id"][rows["live"]]

    def paths(self) -> tuple[np.ndarray, list[str | None]]:
        """The ids and paths of every live record, in the order rows were added (no record objects)."""
        live = np.flatnonzero(self._rows["live"][: self._n])
        return self._rows["id"][live], [self._paths[r] for r in live.tolist()]

    def ids(self) -> np.ndarray:
        """Every live id, sorted (int64)."""
        return np.sort(self._ids_in_row_order())

    def _record(self, row: int) -> ImageRecord:
        r = self._rows[row]
        strings = self._strings.values
        coded = {f: (strings[c] if (c := int(r[f])) >= 0 else None) for f in CODED_FIELDS}
        ints = {f: (None if (v := int(r[f])) == NO_INT else v) for f in INT_COLUMNS}
        return ImageRecord(
            id=int(r["id"]), path=self._paths[row], **coded, **ints, tags=self._tags.values[int(r["tags"])]
        )

    def location(self, ids: Sequence[int] | np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Where the vectors of ``ids`` lie: ``(shard names, shard code per id, row per id)``.

        Raises
        ------
        KeyError
            An id is not held, or its vector is not written to a shard yet.
        """
        rows = self.rows_of(ids)
        if (rows < 0).any():
            raise KeyError(f"id {np.asarray(ids).reshape(-1)[np.argmax(rows < 0)]} is not in the index")
        found = self._rows[rows]
        if (found["shard"] == PENDING).any():
            raise KeyError("a vector asked for is not written to a shard yet")
        return self._shards.values, found["shard"].astype(np.int64), found["shard_row"].astype(np.int64)

    def live_by_shard(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per shard, in shard-name order: ``(rows, ids)`` of the rows holding a live id's current
        vector, rows ascending (what an index is filled from, one shard at a time)."""
        rows = self._rows[: self._n]
        live = rows[rows["live"] & (rows["shard"] != PENDING)]
        names = self._shards.values
        out = {}
        for code in sorted(set(live["shard"].tolist()), key=lambda c: names[c]):
            part = live[live["shard"] == code]
            order = np.argsort(part["shard_row"], kind="stable")
            out[names[code]] = (part["shard_row"][order].astype(np.int64), part["id"][order].astype(np.int64))
        return out

    def distinct(self, name: str) -> list:
        """Distinct values of metadata field ``name`` over the live records, sorted (None left out)."""
        rows = self._rows[: self._n]
        values = np.unique(rows[name][rows["live"]])
        if name in CODED_FIELDS:
            return sorted(self._strings.values[c] for c in values.tolist() if c >= 0)
        if name in INT_COLUMNS:
            return [v for v in values.tolist() if v != NO_INT]
        if name == "path":
            return sorted({self._paths[r] for r in np.flatnonzero(rows["live"]).tolist()} - {None})
        raise KeyError(name)

    def columns(
        self, names: Sequence[str], ids: Sequence[int] | np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Raw columns, without a record object per row: of every live record in the order rows were added,
        or of ``ids`` in their order (an id not held reads as a record whose fields are all None).

        Parameters
        ----------
        names
            ``"id"`` (int64); a field of :data:`CODED_FIELDS` (int32 codes, -1 for None; :meth:`decode`
            gives the values); a field of :data:`INT_COLUMNS` (int32, :data:`NO_INT` for None);
            ``"tags"`` (int32 codes of a record's whole tag set, -1 for an id not held; :meth:`decode`
            gives the ``(key, value)`` tuples).
        ids
            The ids to read (default: every live record).

        Raises
        ------
        KeyError
            A name that is not such a column.
        """
        for name in names:
            if name not in ("id", "tags") and name not in CODED_FIELDS and name not in INT_COLUMNS:
                raise KeyError(name)
        if ids is None:
            rows = self._rows[: self._n]
            live = rows["live"]
            return {name: rows[name][live] for name in names}
        at = self.rows_of(ids)
        found = at >= 0
        out = {}
        for name in names:
            column = np.full(len(at), NO_INT if name in INT_COLUMNS else -1, dtype=self._rows.dtype[name])
            column[found] = self._rows[name][at[found]]
            out[name] = column
        return out

    def matching_ids(self, where: MetadataFilter) -> np.ndarray:
        """Ids of the live records ``where`` matches (:meth:`MetadataFilter.matches`), in the order rows
        were added: read from the columns, without a record object per row.

        A coded field compares codes: the filter's values are looked up once among the distinct strings
        (a plate repeats a few hundred), not once per row. Paths, distinct per image, are compared only
        for the rows every other part of the filter keeps.
        """
        rows = self._rows[: self._n]
        mask = rows["live"].copy()
        strings = self._strings.values
        for name in CODED_FIELDS:
            allowed = getattr(where, name)
            if allowed:
                # Surrounding ASCII whitespace is not significant, as in Redis tags.
                mask &= np.isin(rows[name], [c for c, v in enumerate(strings) if v.strip(TRIM) in allowed])
        for name in INT_COLUMNS:
            allowed = getattr(where, name)
            if allowed:
                column = rows[name]
                mask &= np.isin(column, allowed) & (column != NO_INT)
        z = rows["z"]
        if where.z_min is not None:
            mask &= (z != NO_INT) & (z >= where.z_min)
        if where.z_max is not None:
            mask &= (z != NO_INT) & (z <= where.z_max)
        if where.tags:
            groups = where.tag_groups()
            kept = [c for c, tags in enumerate(self._tags.values) if tags_match(groups, tag_strings(tags))]
            mask &= np.isin(rows["tags"], kept)
        if where.path:
            allowed = set(where.path)
            at = np.flatnonzero(mask)
            paths = (self._paths[r] for r in at.tolist())
            mask[at] = np.fromiter((p is not None and p.strip(TRIM) in allowed for p in paths), bool, len(at))
        return rows["id"][mask]

    def decode(self, name: str, raw: Sequence[int] | np.ndarray) -> list:
        """The values of raw entries of column ``name`` (from :meth:`columns`), None where absent."""
        raw = np.asarray(raw).tolist()
        if name in CODED_FIELDS:
            strings = self._strings.values
            return [None if c < 0 else strings[c] for c in raw]
        if name in INT_COLUMNS:
            return [None if v == NO_INT else v for v in raw]
        if name == "tags":
            return [() if c < 0 else self._tags.values[c] for c in raw]
        raise KeyError(name)

    def tag_strings(self) -> list[str]:
        """Distinct ``key=value`` tag strings over the live records, sorted."""
        rows = self._rows[: self._n]
        codes = np.unique(rows["tags"][rows["live"]]).tolist()
        return sorted({t for c in codes for t in tag_strings(self._tags.values[c])})

    # ------------------------------------------------------------------ changes
    def put(
        self,
        records: Sequence[ImageRecord],
        shard: str | None = None,
        shard_rows: Sequence[int] | None = None,
    ) -> None:
        """Upsert ``records`` (the last of an id repeated wins), not yet written to a shard unless
        ``shard`` (and each one's row in it) is given."""
        if not len(records):
            return
        ids = np.fromiter((r.id for r in records), dtype=np.int64, count=len(records))
        rows = np.arange(len(ids)) if shard_rows is None else np.asarray(shard_rows, dtype=np.int64)
        if len(np.unique(ids)) != len(ids):  # keep each id's last record, in the order given
            _, first_from_end = np.unique(ids[::-1], return_index=True)
            keep = np.sort(len(ids) - 1 - first_from_end)
            records, ids, rows = [records[k] for k in keep.tolist()], ids[keep], rows[keep]
        new = self._append(ids, [r.path for r in records])
        new["shard"] = PENDING if shard is None else self._shards.code(shard)
        new["shard_row"] = -1 if shard_rows is None else rows
        strings = self._strings.code
        for f in CODED_FIELDS:
            new[f] = [-1 if (v := getattr(r, f)) is None else strings(v) for r in records]
        for f in INT_COLUMNS:
            new[f] = [NO_INT if (v := getattr(r, f)) is None else v for r in records]
        new["tags"] = [self._tags.code(r.tags) for r in records]
        self._maybe_rebuild()

    def _append(self, ids: np.ndarray, paths: Sequence[str | None]) -> np.ndarray:
        """Supersede the live rows of ``ids`` (unique) and append one live row each; return the new rows
        (a view, their other columns for the caller to fill)."""
        old = self.rows_of(ids)
        old = old[old >= 0]
        self._rows["live"][old] = False
        self._live -= len(old)
        start, n = self._n, len(ids)
        self._reserve(start + n)
        new = self._rows[start : start + n]
        new["id"], new["live"] = ids, True
        self._paths.extend(paths)
        self._recent.update(zip(ids.tolist(), range(start, start + n)))
        self._n += n
        self._live += n
        return new

    def load_shard(
        self,
        shard: str,
        ids: np.ndarray,
        meta: dict[str, list],
        tags: Sequence[str | None],
        deleted: np.ndarray,
    ) -> None:
        """Apply one shard as read back (its columns: ``meta`` by field, ``tags`` as JSON), row by row: a
        row upserts its record (its vector at that row of ``shard``), a tombstone (``deleted``) removes
        its id. Appended column-wise, without a record object per row, when no id repeats in the shard
        and none is a tombstone (every shard a build writes)."""
        ids = np.asarray(ids, dtype=np.int64)
        deleted = np.asarray(deleted, dtype=bool)
        if deleted.any() or len(np.unique(ids)) != len(ids):
            for row in range(len(ids)):
                if deleted[row]:
                    self.pop(int(ids[row]), None)
                else:
                    record = ImageRecord(id=int(ids[row]), **{f: meta[f][row] for f in meta},
                                         tags=json.loads(tags[row] or "{}"))  # fmt: skip
                    self.put([record], shard, [row])
            return
        if not len(ids):
            return
        new = self._append(ids, meta["path"])
        new["shard"], new["shard_row"] = self._shards.code(shard), np.arange(len(ids))
        for f in CODED_FIELDS:
            code = {v: (-1 if v is None else self._strings.code(v)) for v in set(meta[f])}
            new[f] = [code[v] for v in meta[f]]
        for f in INT_COLUMNS:
            new[f] = [NO_INT if v is None else v for v in meta[f]]
        code = {t: self._tags.code(normalise_tags(json.loads(t or "{}"))) for t in set(tags)}
        new["tags"] = [code[t] for t in tags]
        self._maybe_rebuild()

    def pop(self, image_id: int, *default):  # type: ignore[override]
        """Remove ``image_id``; return its record (``default``, or KeyError, when absent)."""
        row = self._row_of(int(image_id))
        if row < 0:
            if default:
                return default[0]
            raise KeyError(image_id)
        record = self._record(row)
        self._rows["live"][row] = False
        self._live -= 1
        return record

    def place(self, shard: str, ids: np.ndarray, deleted: np.ndarray) -> None:
        """Record that rows of ``ids`` were written to ``shard``, in that order: each live id's vector
        lies at its (last) row there; a tombstone (``deleted``) marks nothing (its id was popped)."""
        code = self._shards.code(shard)
        ids = np.asarray(ids, dtype=np.int64)
        # The last row of an id written twice in one shard holds its current vector.
        _, first_from_end = np.unique(ids[::-1], return_index=True)
        positions = len(ids) - 1 - first_from_end
        positions = positions[~np.asarray(deleted, dtype=bool)[positions]]
        rows = self.rows_of(ids[positions])
        keep = rows >= 0
        self._rows["shard"][rows[keep]] = code
        self._rows["shard_row"][rows[keep]] = positions[keep]

    def _reserve(self, n: int) -> None:
        if n > len(self._rows):
            # A quarter more, not twice: the slack of a 10 M-row table is memory held for nothing.
            grown = np.zeros(max(n, len(self._rows) + len(self._rows) // 4), dtype=_ROW)
            grown[: self._n] = self._rows[: self._n]
            self._rows = grown

    def seal(self) -> None:
        """Rebuild the sorted lookup now, so that no row waits in the dict of recent ones (~100 B a row, up
        to a quarter of the table), and drop the rows reserved for growth: for a table filled once and then
        read (a reader, a served catalog)."""
        if self._recent:
            self._rebuild()
        if len(self._rows) > self._n:
            self._rows = self._rows[: self._n].copy()

    def _maybe_rebuild(self) -> None:
        if len(self._recent) > max(_RECENT_MIN, len(self._sorted_ids) // _RECENT_FRACTION):
            self._rebuild()

    def _rebuild(self) -> None:
        rows = self._rows[: self._n]
        if self._n - self._live > self._live:  # mostly dead: drop the dead rows first
            live = np.flatnonzero(rows["live"])
            self._rows = self._rows[live].copy()
            self._paths = [self._paths[r] for r in live.tolist()]
            self._n = len(live)
            self._reserve(self._n + 1024)
            rows = self._rows[: self._n]
        live = np.flatnonzero(rows["live"])
        order = np.argsort(rows["id"][live], kind="stable")
        self._sorted_ids = rows["id"][live][order].copy()
        self._sorted_rows = live[order].astype(np.int64)
        self._recent = {}
