"""What an image's metadata is: :class:`ImageMeta` (what a name or table says), :class:`ImageRecord`
(an indexed image), :class:`Hit` (a search result), :class:`MetadataFilter` (a typed filter every store
renders itself), the field lists and their normalising. Pure: imports nothing of the project but its
errors, so input code, stores and readers share it without importing each other.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from indexer.core.errors import ConfigError

#: Whitespace Redis trims around tag values (ASCII only: Unicode spaces are kept, and so are they here).
TRIM = " \t\n\r\f\v"
#: Metadata fields every store keeps beside a vector, in this order.
RECORD_FIELDS = ("path", "plate", "well", "row", "column", "site", "channel", "z", "source")
#: The fields an image's name or metadata table can give (:class:`ImageMeta`'s, tags aside).
META_FIELDS = ("plate", "well", "row", "column", "site", "channel", "z")
#: Values of :attr:`ImageRecord.source`: where the pixels came from (``None``: an index built before it was
#: recorded).
SOURCES = ("real", "synthetic")


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """Metadata parsed from a BBBC006 path. Fields are ``None`` when the name does not say.

    A build keeps one per listed image, so it is slotted and :func:`parse_path` interns its strings
    (a plate has one plate name, 384 wells and 2 channels, shared by every image instead of copied).

    ``well`` is upper case with two digits (``A01``), ``row`` its letter, ``column`` its number,
    ``channel`` is ``"w1"`` (Hoechst) or ``"w2"`` (phalloidin).
    """

    plate: str | None = None
    well: str | None = None
    row: str | None = None
    column: int | None = None
    site: int | None = None
    channel: str | None = None
    z: int | None = None
    tags: tuple[tuple[str, str], ...] = ()  # (key, value) pairs from a --metadata table's extra columns

    @property
    def parsed(self) -> bool:
        """True when the file name matched the BBBC006 pattern."""
        return self.well is not None

    @property
    def described(self) -> bool:
        """True when the image has any metadata besides z (from its name or a metadata table)."""
        return any(v is not None for v in (self.plate, self.well, self.site, self.channel)) or bool(self.tags)


def normalise_well(well: str) -> str:
    """Return a well name as upper-case letter + two digits (``a1``/``A01``/``a01`` -> ``A01``).

    Raises
    ------
    ValueError
        If ``well`` is not a letter followed by a number.
    """
    m = re.fullmatch(r"\s*([A-Za-z])0*(\d{1,2})\s*", well)
    if not m:
        raise ValueError(f"not a well name: {well!r} (expected e.g. A01)")
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


def normalise_channel(channel: str | int) -> str:
    """Return a channel as ``w<digit>`` (``1``, ``w1``, ``W1`` -> ``w1``).

    Raises
    ------
    ValueError
        If ``channel`` is not one digit with an optional ``w``.
    """
    m = re.fullmatch(r"\s*[wW]?([1-9])\s*", str(channel))
    if not m:
        raise ValueError(f"not a channel: {channel!r} (expected w1 or w2)")
    return f"w{m.group(1)}"


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
