"""Every CSV the project writes: formula cells made inert, line breaks inside a value quoted.

A cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return, which some
spreadsheets skip before those) is read by Excel, LibreOffice and Google Sheets as a formula: a file name
or a metadata tag such as ``=HYPERLINK(...)`` would run when the CSV is opened. The OWASP rule is to
prefix such a cell with a single quote, which the spreadsheet shows as text and hides.

A value may also hold a line break: Linux file names may hold ``\\r`` and ``\\n`` (a ``--metadata`` tag
may not: the table reader refuses control characters). Python 3.10/3.11's ``csv`` (and pandas'
``to_csv``, which uses it) quotes only the characters of its line terminator, so with
``lineterminator="\\n"`` a bare ``\\r`` is written unquoted and every reader (a spreadsheet,
``pandas.read_csv``, ``csv.reader``) splits the row there. The writers here use the RFC 4180 dialect
(``\\r\\n``), which quotes any value holding ``\\r`` or ``\\n``, and end each row with ``\\n`` as the
project's CSVs always have (:class:`UnixRowEnds`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

#: The first characters that make a spreadsheet cell a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: What the csv writer ends a row with: it decides the quoting (a value holding \r or \n is quoted).
_RFC_END = "\r\n"


def escape_formula(value: Any) -> Any:
    """``value`` with a ``'`` in front when it is a string a spreadsheet would run as a formula.

    Numbers (and anything not a ``str``) come back unchanged: ``-0.5`` written as a number is data, while
    the string ``"-0.5"`` in a text column is escaped like any other text that begins with ``-``.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class UnixRowEnds:
    """A text file for a csv writer whose rows end ``\\r\\n``: each row is written ending ``\\n``.

    ``csv.writer`` (and pandas through it) writes one row per ``write`` call, ending with the line
    terminator; a line break inside a value is quoted and never at the end, so only the row's end changes.
    Were a writer ever to pass several rows at once, those would keep ``\\r\\n``: still valid CSV.
    """

    def __init__(self, f: TextIO) -> None:
        self._f = f

    def write(self, row: str) -> int:
        """Write ``row`` with its final ``\\r\\n`` as ``\\n``."""
        return self._f.write(row[: -len(_RFC_END)] + "\n" if row.endswith(_RFC_END) else row)


def writer(f: TextIO) -> Any:
    """A ``csv.writer`` onto ``f`` (opened with ``newline=""``): values holding ``\\r``/``\\n`` quoted.

    The caller escapes formula cells (:func:`escape_formula`) of text that is the user's.
    """
    return csv.writer(UnixRowEnds(f), dialect="excel", lineterminator=_RFC_END)


def dict_writer(f: TextIO, fieldnames: Sequence[str], **kwargs: Any) -> csv.DictWriter:
    """A ``csv.DictWriter`` onto ``f`` with the same quoting and row ends as :func:`writer`."""
    return csv.DictWriter(UnixRowEnds(f), fieldnames, dialect="excel", lineterminator=_RFC_END, **kwargs)


def escape_frame(frame: Any) -> Any:
    """A copy of the DataFrame ``frame`` with the formula cells of its text columns escaped, and of its
    header: a column named for a user's tag key (``+cmd``) is a cell too."""
    frame = frame.copy()
    for c in frame.columns:
        if frame[c].dtype == object:
            frame[c] = frame[c].map(escape_formula)
    return frame.rename(columns=escape_formula)


def frame_to_csv(frame: Any, path: Path) -> None:
    """Write the DataFrame ``frame`` (no index) to ``path`` as :func:`writer` writes rows."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        frame.to_csv(UnixRowEnds(f), index=False, quoting=csv.QUOTE_MINIMAL, lineterminator=_RFC_END)
