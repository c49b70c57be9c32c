"""Which indexed images a robustness query may be compared against. Pure.

An index of z-stacks holds, next to every query, its own site at other focal planes and in other
channels: near-duplicates. A query's top-k then mostly lists them, and "consistency" measures whether
it stays next to its own copies. The exclusion mode says which of the query's relatives leave **both**
the clean and the perturbed result lists:

========= ===========================================================================================
``none``  nothing: the query image itself is in both lists (the old behaviour)
``image`` the query image itself
``site``  every image of the query's site (same plate, well and site; any z, any channel) - default
``well``  every image of the query's well (same plate and well)
========= ===========================================================================================

A query whose site (or well) is unknown, because its file name says nothing, falls back to ``image``
and is counted. Self-retrieval (self@1) is always measured against the candidates plus the source
image, so it stays defined when the source is excluded from the consistency lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Exclusion modes, mildest first.
EXCLUDE = ("none", "image", "site", "well")
#: The mode of ``mae-eval robustness`` and the explorer's live panel when none is given.
DEFAULT_EXCLUDE = "site"

_KEYS = {"site": ("plate", "well", "site"), "well": ("plate", "well")}


def _field(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


@dataclass(frozen=True)
class Exclusions:
    """Per query id, the ids that leave both lists; and the queries that fell back to ``image``."""

    mode: str
    excluded: dict[int, frozenset[int]]
    fallback: tuple[int, ...]


def exclusions(records: Iterable[Any], query_ids: Iterable[int], mode: str) -> Exclusions:
    """The ids each query's relatives occupy, by exclusion ``mode``.

    Parameters
    ----------
    records : iterable of dict or object
        Every indexed record, with ``id``, ``plate``, ``well`` and ``site`` (keys or attributes).
    query_ids : iterable of int
        The query ids (each must be among ``records``).
    mode : str
        One of :data:`EXCLUDE`.

    Returns
    -------
    Exclusions
        ``excluded[q]`` always contains ``q`` except in mode ``none``.

    Raises
    ------
    ValueError
        If ``mode`` is unknown.
    """
    if mode not in EXCLUDE:
        raise ValueError(f"unknown exclusion mode {mode!r}; choose from {', '.join(EXCLUDE)}")
    query_ids = list(query_ids)
    if mode == "none":
        return Exclusions(mode, {q: frozenset() for q in query_ids}, ())
    if mode == "image":
        return Exclusions(mode, {q: frozenset({q}) for q in query_ids}, ())
    keys = _KEYS[mode]
    groups: dict[tuple[Any, ...], set[int]] = {}
    key_of: dict[int, tuple[Any, ...] | None] = {}
    for r in records:
        key = tuple(_field(r, f) for f in keys)
        rid = int(_field(r, "id"))
        if any(v is None for v in key):
            key_of[rid] = None  # two unknown wells are not the same well
            continue
        key_of[rid] = key
        groups.setdefault(key, set()).add(rid)
    excluded, fallback = {}, []
    for q in query_ids:
        key = key_of.get(q)
        if key is None:
            excluded[q] = frozenset({q})
            fallback.append(q)
        else:
            excluded[q] = frozenset(groups[key] | {q})
    return Exclusions(mode, excluded, tuple(fallback))


def cut(result_ids: Sequence[int], excluded: Iterable[int], k: int) -> list[int]:
    """The first ``k`` result ids that are not ``excluded`` (order kept)."""
    drop = set(excluded)
    return [i for i in result_ids if i not in drop][:k]
