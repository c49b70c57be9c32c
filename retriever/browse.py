"""The explorer's start page: the indexed images a filter keeps, in a seeded shuffled order, a page at a
time, without a query.

The order is a hash of (id, seed) (splitmix64): stable for a seed, so paging never repeats an image, and
found for a page of ``offset + limit`` images by a partial sort, not a sort of every matching id.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.core.records import MetadataFilter
from indexer.stores.record_table import RecordTable

#: The most images one browse page returns.
MAX_PAGE = 200


def _mix(ids: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of ``ids ^ seed``: a shuffled order that does not depend on how ids were made."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shuffled_page(ids: np.ndarray, seed: int, offset: int, limit: int) -> np.ndarray:
    """``ids[offset : offset + limit]`` of ``ids`` in the seeded shuffled order (ties by id)."""
    ids = np.asarray(ids, dtype=np.int64)
    end = min(offset + limit, len(ids))
    if offset >= end:
        return ids[:0]
    key = _mix(ids, seed)
    first = np.argpartition(key, end - 1)[:end] if end < len(ids) else np.arange(len(ids))
    first = first[np.lexsort((ids[first], key[first]))]
    return ids[first[offset:end]]


def browse(table: RecordTable, where: MetadataFilter, seed: int, offset: int, limit: int) -> dict[str, Any]:
    """``{"total", "offset", "seed", "records"}``: the records of one page of the images ``where`` keeps."""
    ids = table.matching_ids(where)
    page = shuffled_page(ids, seed, offset, min(limit, MAX_PAGE))
    records = [r.to_dict() for r in table.get_many(page) if r is not None]
    return {"total": int(len(ids)), "offset": offset, "seed": seed, "records": records}
