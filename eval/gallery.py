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

The planes of one multi-plane file (recorded as ``file.tif#0``, ``file.tif#1``, ...) are one field of
view: in modes ``site`` and ``well`` they are each other's relatives whatever their names say (a plain
stack has no site). A query whose site (or well) is unknown, because its file name says nothing, and
that is no such plane, falls back to ``image`` and is counted. Self-retrieval (self@1) is always
measured against the candidates plus the source image, so it stays defined when the source is excluded
from the consistency lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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
    """The ids each query's relatives occupy, by exclusion ``mode``, from every record: the reference
    that :func:`exclusions_from` (what ``mae-eval`` and the live panel run) is tested against.

    Parameters
    ----------
    records : iterable of dict or object
        Every indexed record, with ``id``, ``path``, ``plate``, ``well`` and ``site`` (keys or attributes).
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
    query_ids = list(query_ids)
    if mode not in _KEYS:
        return exclusions_from(lambda q, keys: None, query_ids, mode)  # none, image (or unknown: raises)
    from indexer.images.sources import stack_file

    keys = _KEYS[mode]
    groups: dict[tuple[Any, ...], set[int]] = {}
    key_of: dict[int, tuple[Any, ...] | None] = {}
    stacks: dict[str, set[int]] = {}
    file_of: dict[int, str] = {}
    for r in records:
        key = tuple(_field(r, f) for f in keys)
        rid = int(_field(r, "id"))
        file = stack_file(_field(r, "path"))
        if file is not None:
            file_of[rid] = file
            stacks.setdefault(file, set()).add(rid)
        if any(v is None for v in key):
            key_of[rid] = None  # two unknown wells are not the same well
            continue
        key_of[rid] = key
        groups.setdefault(key, set()).add(rid)

    def relatives(q: int, _keys: tuple[str, ...]) -> set[int] | None:
        key = key_of.get(q)
        group = None if key is None else groups[key]
        planes = stacks.get(file_of.get(q, ""))
        return group if planes is None else planes | (group or set())

    return exclusions_from(relatives, query_ids, mode)


def _without_groups(query_ids: list[int], mode: str) -> Exclusions | None:
    """The exclusions of the modes that need no records (``none``, ``image``); None for the others."""
    if mode not in EXCLUDE:
        raise ValueError(f"unknown exclusion mode {mode!r}; choose from {', '.join(EXCLUDE)}")
    if mode == "none":
        return Exclusions(mode, {q: frozenset() for q in query_ids}, ())
    if mode == "image":
        return Exclusions(mode, {q: frozenset({q}) for q in query_ids}, ())
    return None


def exclusions_from(
    relatives: Callable[[int, tuple[str, ...]], Iterable[int] | None], query_ids: Iterable[int], mode: str
) -> Exclusions:
    """:func:`exclusions` from a lookup of each query's group instead of every record: what ``mae-eval``
    and the explorer's live panel use (their catalog finds a group in the group's size).

    Parameters
    ----------
    relatives : callable
        ``relatives(query_id, keys)``: the ids of the records equal to the query on ``keys`` (a prefix
        of plate, well, site), the query included; ``None`` where the query is not indexed or one of its
        keys is None (:meth:`retriever.catalog.Catalog.relatives`).
    query_ids, mode
        As :func:`exclusions`.

    Returns
    -------
    Exclusions
        Equal to :func:`exclusions` over the records ``relatives`` reads.

    Raises
    ------
    ValueError
        If ``mode`` is unknown.
    """
    query_ids = list(query_ids)
    trivial = _without_groups(query_ids, mode)
    if trivial is not None:
        return trivial
    excluded, fallback = {}, []
    for q in query_ids:
        group = relatives(q, _KEYS[mode])
        if group is None:
            excluded[q] = frozenset({q})
            fallback.append(q)
        else:
            excluded[q] = frozenset(int(i) for i in group) | {q}
    return Exclusions(mode, excluded, tuple(fallback))


def cut(result_ids: Sequence[int], excluded: Iterable[int], k: int) -> list[int]:
    """The first ``k`` result ids that are not ``excluded`` (order kept)."""
    drop = set(excluded)
    return [i for i in result_ids if i not in drop][:k]
