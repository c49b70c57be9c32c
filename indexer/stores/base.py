"""The VectorStore protocol, the records it holds and the typed metadata filter.

Both stores (FAISS and Redis) implement all of :class:`VectorStore`; the retriever, eval and the CLIs
see only this protocol. Vectors are float32, L2-normalised, so inner product = cosine similarity, and
every store reports ``score`` as cosine similarity (1.0 = identical) whatever it uses inside.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from indexer.bbbc006.names import normalise_channel, normalise_well
from indexer.errors import ConfigError

#: Metadata fields every store keeps beside a vector, in this order.
#: Whitespace Redis trims around tag values (ASCII only: Unicode spaces are kept, and so are they here).
TRIM = " \t\n\r\f\v"

RECORD_FIELDS = ("path", "plate", "well", "row", "column", "site", "channel", "z", "source")
#: Values of :attr:`ImageRecord.source`: where the pixels came from (``None``: an index built before it was
#: recorded).
SOURCES = ("real", "synthetic")

# --- store rules, named once: every store follows them, so both answer alike ------------------------

#: Extra nearest-neighbour candidates a store fetches beyond ``k``, so that ties at the k-th score are
#: broken by id the same way in every store (:func:`rank_hits`).
SPARE_CANDIDATES = 8
#: Slack on ``max_distance``: Redis computes distances in float32 and prints 12 significant digits, and
#: FAISS's float32 inner products round alike; a hit at exactly the bound must pass in both.
DISTANCE_SLACK = 1e-6
#: Largest difference expected between the same vector read back from two stores, by stored type.
VECTOR_TOLERANCE = {"FLOAT32": 1e-6, "FLOAT16": 1e-3}


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One indexed image: its stable id and metadata (``None`` where the file name says nothing).

    Slotted: the FAISS store holds one per image (52,224 for a full plate), and a slotted record is
    ~100 B smaller than one with a ``__dict__``.
    """

    id: int
    path: str
    plate: str | None = None
    well: str | None = None
    row: str | None = None
    column: int | None = None
    site: int | None = None
    channel: str | None = None
    z: int | None = None
    source: str | None = None
    tags: tuple[tuple[str, str], ...] = ()  # (key, value) pairs, sorted: a metadata table's extra columns

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", normalise_tags(self.tags))

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a plain dict (JSON-ready; ``tags`` as ``{key: value}``)."""
        d = asdict(self)
        d["tags"] = dict(self.tags)
        return d

    @property
    def tag_strings(self) -> tuple[str, ...]:
        """The tags as ``key=value`` strings (what a tag filter names, what Redis stores)."""
        return tag_strings(self.tags)


@dataclass(frozen=True)
class Hit:
    """One search result: rank (1-based), cosine similarity and the record it points to."""

    rank: int
    score: float
    record: ImageRecord

    @property
    def id(self) -> int:
        """The id of the image found."""
        return self.record.id

    def to_dict(self) -> dict[str, Any]:
        """Return ``{rank, id, score, path, plate, well, row, column, site, channel, z, source}``."""
        return {"rank": self.rank, "score": self.score, **self.record.to_dict()}


def normalise_tags(tags: Any) -> tuple[tuple[str, str], ...]:
    """Tags as sorted ``(key, value)`` pairs, from a dict, pairs, or ``key=value`` strings.

    Raises
    ------
    ConfigError
        A key that is empty or holds ``=``; a key or value with control characters.
    """
    if not tags:
        return ()
    if isinstance(tags, dict):
        items = tags.items()
    else:
        items = [tuple(t.split("=", 1)) if isinstance(t, str) else tuple(t) for t in tags]
    out = {}
    for item in items:
        if len(item) != 2:
            raise ConfigError(f"a tag is KEY=VALUE, got {item[0]!r}")
        key, value = (str(x).strip(TRIM) for x in item)
        if not key or "=" in key:
            raise ConfigError(f"invalid tag name {key!r} (not empty, no '=')")
        if any(unicodedata.category(c) == "Cc" for c in key + value):
            raise ConfigError(f"tag {key}={value!r} contains control characters")
        out[key] = value
    return tuple(sorted(out.items()))


def _lenient(normalise):
    # A value the normaliser does not recognise (a well "99", a channel "DAPI" of your own data) stays
    # as given, stripped: it matches what the index holds, or nothing, and the query says so.
    def convert(value: Any) -> str:
        try:
            return normalise(value)
        except ValueError:
            return str(value).strip(TRIM)

    return convert


def _tuple(values: Any, convert) -> tuple:
    if values is None:
        return ()
    if isinstance(values, (str, int)):
        values = (values,)
    return tuple(sorted({convert(v) for v in values}))


@dataclass(frozen=True)
class MetadataFilter:
    """A conjunction of per-field allow-lists: a record matches when, for every non-empty field, its
    value is one of the listed values (OR within a field, AND across fields). ``z_min``/``z_max``
    bound the z-slice inclusively. An empty filter matches everything.

    Values are normalised on construction (``a1`` -> ``A01``, ``1`` -> ``w1``, surrounding whitespace
    dropped, as Redis tags drop it), so a filter means the same thing in every store. Control
    characters are refused. Stores render it themselves (FAISS: a boolean mask; Redis: an escaped
    query); user text is never pasted into a query string.
    """

    plate: tuple[str, ...] = ()
    well: tuple[str, ...] = ()
    row: tuple[str, ...] = ()
    column: tuple[int, ...] = ()
    site: tuple[int, ...] = ()
    channel: tuple[str, ...] = ()
    z: tuple[int, ...] = ()
    z_min: int | None = None
    z_max: int | None = None
    path: tuple[str, ...] = field(default=())
    source: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # "key=value": OR among values of one key, AND across keys

    def __post_init__(self) -> None:
        conv = {
            "plate": lambda v: str(v).strip(TRIM),
            "well": _lenient(normalise_well),
            "row": lambda r: str(r).strip(TRIM).upper(),
            "column": int,
            "site": int,
            "channel": _lenient(normalise_channel),
            "z": int,
            "path": lambda v: str(v).strip(TRIM),
            "source": lambda v: str(v).strip(TRIM).lower(),
        }
        for name, fn in conv.items():
            object.__setattr__(self, name, _tuple(getattr(self, name), fn))
        bad = [s for s in self.source if s not in SOURCES]
        if bad:
            raise ConfigError(f"unknown source filter {bad[0]!r}; choose from {', '.join(SOURCES)}")
        tags = self.tags if isinstance(self.tags, (list, tuple, set, frozenset)) else (self.tags,)
        pairs = [normalise_tags([t])[0] for t in tags]
        object.__setattr__(self, "tags", tuple(sorted(set(tag_strings(pairs)))))
        for name in ("plate", "well", "row", "channel", "path"):
            for value in getattr(self, name):
                if not value:
                    raise ConfigError(f"empty {name} filter value")
                # Redis tag tokenising mangles control characters; refuse them rather than match wrongly.
                if any(unicodedata.category(c) == "Cc" for c in value):
                    raise ConfigError(f"{name} filter value {value!r} contains control characters")

    @property
    def is_empty(self) -> bool:
        """True when the filter matches every record."""
        return not any(getattr(self, f.name) not in ((), None) for f in fields(self))

    def matches(self, record: ImageRecord) -> bool:
        """The reference semantics of the filter, for one record."""
        for name in ("plate", "well", "row", "column", "site", "channel", "z", "path", "source"):
            allowed = getattr(self, name)
            value = getattr(record, name)
            value = value.strip(TRIM) if isinstance(value, str) else value
            if allowed and value not in allowed:
                return False
        if self.z_min is not None and (record.z is None or record.z < self.z_min):
            return False
        if self.z_max is not None and (record.z is None or record.z > self.z_max):
            return False
        return tags_match(self.tag_groups(), record.tag_strings)

    def tag_groups(self) -> dict[str, tuple[str, ...]]:
        """The tag filter grouped by key: ``{key: ("key=a", "key=b")}`` (OR within, AND across)."""
        groups: dict[str, list[str]] = {}
        for t in self.tags:
            groups.setdefault(t.split("=", 1)[0], []).append(t)
        return {k: tuple(v) for k, v in groups.items()}


def tag_strings(tags: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """``(key, value)`` tag pairs as the ``key=value`` strings a tag filter names and Redis stores."""
    return tuple(f"{k}={v}" for k, v in tags)


def tags_match(groups: dict[str, tuple[str, ...]], tag_strings: Sequence[str]) -> bool:
    """True when ``tag_strings`` hold one of the values of every key in ``groups``."""
    have = set(tag_strings)
    return all(have.intersection(values) for values in groups.values())


@runtime_checkable
class VectorStore(Protocol):
    """What every vector store offers. Ids are non-negative int64, stable across runs (derived from
    image content), so re-adding an id replaces it (upsert). A store is a context manager: leaving
    the ``with`` block closes it."""

    @property
    def location(self) -> str:
        """Where the store lives, for messages (a folder, or a Redis index and server; never a password)."""
        ...

    @property
    def vector_tolerance(self) -> float:
        """Largest difference between a vector written and the same vector read back (its stored type)."""
        ...

    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Upsert ``vectors`` (n, dim float32, L2-normalised) with their ``records`` (ids inside)."""
        ...

    def bulk_load(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Add records whose ids the store does not hold: a store may take a faster path than :meth:`add`
        (Redis: pipelined ``HSET`` without MULTI/DEL; FAISS: :meth:`add`). Durable, like every write, at
        the next :meth:`flush`; reads see it at once. An id the store may hold must go through :meth:`add`:
        a field that became ``None`` could survive here."""
        ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: MetadataFilter | None = None,
        max_distance: float | None = None,
    ) -> list[list[Hit]]:
        """Return, for each query row, up to ``k`` hits by descending cosine similarity (ties by id).

        ``max_distance`` keeps only hits with cosine distance ``1 - score <= max_distance`` (range query).
        """
        ...

    def get(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        """Return the records of ``ids`` (``None`` for an id not in the store)."""
        ...

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Return the stored vectors of ``ids`` as (n, dim) float32; raises KeyError for a missing id."""
        ...

    def ids(self) -> np.ndarray:
        """Return every id in the store, sorted, as int64."""
        ...

    def count(self) -> int:
        """Return the number of vectors stored."""
        ...

    def delete(self, ids: Sequence[int]) -> int:
        """Delete ``ids``; return how many were present."""
        ...

    def field_values(self, name: str) -> list:
        """Return the distinct values of metadata field ``name`` the store holds, sorted (None left out)."""
        ...

    def read_manifest(self) -> dict[str, Any] | None:
        """Return the stored index manifest, or ``None`` for a new, empty store."""
        ...

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Store the index manifest (what the index was built with)."""
        ...

    def read_transform(self) -> bytes | None:
        """Return the fitted embedding normalisation (``.npz`` bytes), or ``None`` when there is none."""
        ...

    def write_transform(self, data: bytes) -> None:
        """Store the fitted embedding normalisation (``.npz`` bytes) beside the manifest."""
        ...

    def flush(self) -> None:
        """Make every write so far durable (FAISS: atomic file write; Redis: send bulk-loaded hashes still
        held back for a full pipeline)."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...

    def check(self, full: bool = False) -> list[str]:
        """Return what is damaged in the store, one line each (empty: sound).

        The cheap check runs on open; ``full`` also reads everything (checksums, every vector).
        """
        ...

    def __enter__(self) -> VectorStore:
        """Return the store itself."""
        ...

    def __exit__(self, *exc: object) -> None:
        """Close the store."""
        ...


def check_queries(queries: np.ndarray, k: int, dim: int | None) -> np.ndarray:
    """Validate a search's ``k`` and query rows the same way in every store; return them (n, dim) float32.

    ``dim`` None (an empty store) checks only ``k``.

    Raises
    ------
    ConfigError
        ``k < 1``, or queries of another dimension.
    ValueError
        A query row is zero or not finite: it has no cosine similarity (Redis would rank NaN distances
        in an arbitrary order).
    """
    queries = np.atleast_2d(np.ascontiguousarray(queries, dtype=np.float32))
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if dim is None:
        return queries
    if queries.shape[1] != dim:
        raise ConfigError(f"query vectors are {queries.shape[1]}-d, the index is {dim}-d")
    norms = np.linalg.norm(queries, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"query rows {bad[:10].tolist()} are zero or not finite: no cosine similarity")
    return queries


def check_batch(vectors: np.ndarray, records: Sequence[ImageRecord]) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, dim) array with one record per row (every store's
    ``add``/``bulk_load`` takes a batch this way).

    Raises
    ------
    ValueError
        Not two-dimensional, or not one row per record.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(records):
        raise ValueError("vectors must be (n, dim) with one record per row")
    return vectors


def check_storable(records: Sequence[ImageRecord]) -> None:
    """Refuse records whose text cannot be stored as UTF-8 (Redis tags, parquet strings, JSON, CSV).

    Paths of files whose names are not UTF-8 are escaped by :func:`indexer.sources.display_path`
    before they get here; this check keeps any other caller from half-writing a batch.

    Raises
    ------
    ValueError
        Naming the record and the field.
    """
    for r in records:
        texts = [(name, getattr(r, name)) for name in ("path", "plate", "well", "row", "channel")]
        for name, value in texts + [("tag", t) for t in r.tag_strings]:
            if value is None:
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"record {r.id}: {name} {value!r} is not valid UTF-8 (escape it with "
                    "indexer.sources.display_path)"
                ) from e


def rank_hits(ids: np.ndarray, scores: np.ndarray, records: dict[int, ImageRecord], k: int) -> list[Hit]:
    """Sort candidate ``(id, score)`` pairs by descending score, ties by ascending id, keep ``k``.

    Stores share this so that FAISS and Redis order equal scores the same way.
    """
    order = np.lexsort((ids, -scores))[:k]
    return [Hit(rank=r + 1, score=float(scores[i]), record=records[int(ids[i])]) for r, i in enumerate(order)]
