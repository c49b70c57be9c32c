"""Checks on a ``--metadata`` table's header and numeric cells, so a bad table fails when it is read.

A value no store can hold (``site=1e30`` overflowed the writer thread and lost its batch on every
re-run), one that means nothing (``z=inf``, ``z=-5``) or one silently truncated (``z=16.9`` became 16)
is a :class:`~indexer.core.errors.ConfigError` (exit 2) naming the table, the row and the column. A
repeated column is refused rather than resolved silently, and a column that differs from a known field
only in case (``Well``, ``Z``) is named, since it would otherwise become a tag.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

from indexer.core.errors import ConfigError
from indexer.core.limits import METADATA_NUMBER_RANGES

log = logging.getLogger(__name__)


def check_columns(columns: list[str], known: tuple[str, ...], source: Path) -> None:
    """Refuse repeated columns; warn about near misses of a known field (another case).

    Raises
    ------
    ConfigError
        A column name given twice (after trimming spaces).
    """
    twice = sorted(c for c, n in Counter(columns).items() if n > 1)
    if twice:
        raise ConfigError(
            f"the metadata table {source} has the column {twice[0]!r} more than once; keep one of them"
        )
    for c in columns:
        if c not in known and c.lower() in known:
            log.warning(
                "the metadata table %s has a column %r, not %r: it is read as a tag, not as the %s field "
                "(field names are lower case; rename the column to use it as %s)",
                source, c, c.lower(), c.lower(), c.lower(),
            )  # fmt: skip


def header_columns(source: Path) -> list[str] | None:
    """A CSV table's header as written (pandas renames a repeated column ``well.1``), or None."""
    import csv

    if source.suffix.lower() in (".parquet", ".pq"):
        return None
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None  # pandas reports an unreadable file in its own words


def whole_number(value: str, column: str, line: int, source: Path) -> int:
    """The cell ``value`` of ``column`` as a whole number within its range (:data:`METADATA_NUMBER_RANGES`).

    ``16``, ``16.0`` and `` 16 `` are 16; ``16.9``, ``inf``, ``nan``, ``1e30`` and negative numbers are
    refused.

    Raises
    ------
    ConfigError
        Not a number, not finite, not whole, or out of range; the message names the row.
    """
    low, high = METADATA_NUMBER_RANGES[column]
    where = f"{source}, row {line}: {column}"
    try:
        number = float(value)
    except ValueError as e:
        raise ConfigError(f"{where} must be a number, got {value!r}") from e
    if not math.isfinite(number) or number != int(number):
        raise ConfigError(f"{where} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise ConfigError(f"{where} must be between {low} and {high}, got {value!r}")
    return int(number)
