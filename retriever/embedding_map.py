"""The explorer's embedding map: the layout ``mae-index map`` stored, sent to the page as one binary
block (the page draws it on a canvas), and the colour of each point by any field or tag.

``GET /api/map/points`` is ``n`` int64 ids then ``n`` (x, y) float32 pairs, little-endian: 16 bytes a
point (836 kB for a full BBBC006 plate), read by the page as typed arrays without parsing. The map is
read once; whether it is stale (the index's ids have changed since) is checked against the served ids.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.errors import IndexDamagedError
from indexer.stores.record_table import CODED_FIELDS, INT_COLUMNS
from indexer.vectors.layout import EmbeddingMap, ids_fingerprint, load_map
from retriever.catalog import Catalog

#: The fields a map can be coloured by, beside ``tag:KEY``.
COLOUR_FIELDS = ("plate", "well", "row", "column", "site", "channel", "z", "source")


def _order(value: Any) -> tuple:
    try:
        return (0, float(value), str(value))
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def colour_codes(names: list, inverse: np.ndarray) -> tuple[list, np.ndarray]:
    """Codes 0.. into the distinct non-None ``names`` in natural order (numbers numerically), -1 for
    None, per entry of ``inverse`` (indices into ``names``)."""
    kept = sorted((v for v in set(names) if v is not None), key=_order)
    position = {v: i for i, v in enumerate(kept)}
    lookup = np.array([position.get(v, -1) if v is not None else -1 for v in names] or [-1], dtype=np.int32)
    return kept, lookup[inverse] if len(inverse) else np.zeros(0, dtype=np.int32)


class MapView:
    """The stored map of the served index (read on first use) and its colourings."""

    def __init__(self, catalog: Catalog, directory: Path | None) -> None:
        self.catalog = catalog
        self.directory = directory
        self._lock = threading.Lock()
        self._map: EmbeddingMap | None = None
        self._damage: str | None = None
        self._read = False
        self._stale: bool | None = None
        self._points: bytes | None = None
        self._colours: dict[str, bytes] = {}  # by -> its JSON: the served map does not change

    def map(self) -> EmbeddingMap | None:
        """The stored map, or ``None`` where the index folder holds none."""
        with self._lock:
            if not self._read:
                try:
                    self._map = load_map(self.directory) if self.directory is not None else None
                except IndexDamagedError as e:  # served as "no map", with the reason and the fix
                    self._damage = str(e)
                self._read = True
            return self._map

    def meta(self) -> dict[str, Any]:
        """Whether there is a map, its size, how it was made, and whether it is stale."""
        emap = self.map()
        if emap is None:
            return {
                "available": False,
                "hint": self._damage or "no embedding map yet: run `mae-index map --index DIR`",
            }
        if self._stale is None:
            self._stale = emap.is_stale(ids_fingerprint(self.catalog.ids()))
        out = {"available": True, "points": int(len(emap.ids)), "method": emap.method, "stale": self._stale,
               "fields": [f for f in COLOUR_FIELDS if self.catalog.records.distinct(f)], "tags": list(self.catalog.facets()["tags"])}  # fmt: skip
        if self._stale:
            out["hint"] = (
                "the index has changed since the map was made: run `mae-index map --index DIR` again"
            )
        return out

    def points(self) -> bytes:
        """The ids (int64) then the (x, y) pairs (float32) of the map, little-endian."""
        emap = self.map()
        if emap is None:
            return b""
        if self._points is None:
            self._points = emap.ids.astype("<i8").tobytes() + emap.xy.astype("<f4").tobytes()
        return self._points

    def colours_json(self, by: str) -> bytes:
        """:meth:`colours` as UTF-8 JSON, made once per ``by`` (a handful: the fields and tag keys)."""
        held = self._colours.get(by)
        if held is None:
            held = self._colours[by] = json.dumps(self.colours(by), separators=(",", ":")).encode()
        return held

    def colours(self, by: str) -> dict[str, Any]:
        """``{"by", "names", "codes"}``: per map point the code of its value of ``by`` (a field of
        :data:`COLOUR_FIELDS` or ``tag:KEY``) into ``names``, -1 where it has none.

        Raises
        ------
        KeyError
            ``by`` is neither.
        """
        emap = self.map()
        ids = emap.ids if emap is not None else np.zeros(0, dtype=np.int64)
        table = self.catalog.records
        if by.startswith("tag:"):
            key = by[4:]
            raw = table.columns(("tags",), ids=ids)["tags"]
            distinct, inverse = np.unique(raw, return_inverse=True)
            names = [dict(pairs).get(key) for pairs in table.decode("tags", distinct)]
        elif by in COLOUR_FIELDS and (by in CODED_FIELDS or by in INT_COLUMNS):
            raw = table.columns((by,), ids=ids)[by]
            distinct, inverse = np.unique(raw, return_inverse=True)
            names = table.decode(by, distinct)
        else:
            raise KeyError(by)
        kept, codes = colour_codes(names, inverse.reshape(-1))
        return {"by": by, "names": kept, "codes": codes.tolist()}
