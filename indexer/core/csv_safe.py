"""CSV cells that a spreadsheet would run as a formula, made inert. Pure.

A cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return, which some
spreadsheets skip before those) is read by Excel, LibreOffice and Google Sheets as a formula: a file name
or a metadata tag such as ``=HYPERLINK(...)`` would run when the CSV is opened. The OWASP rule is to
prefix such a cell with a single quote, which the spreadsheet shows as text and hides.
"""

from __future__ import annotations

from typing import Any

#: The first characters that make a spreadsheet cell a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(value: Any) -> Any:
    """``value`` with a ``'`` in front when it is a string a spreadsheet would run as a formula.

    Numbers (and anything not a ``str``) come back unchanged: ``-0.5`` written as a number is data, while
    the string ``"-0.5"`` in a text column is escaped like any other text that begins with ``-``.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
