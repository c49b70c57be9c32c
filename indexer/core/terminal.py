"""Text from files and folders made safe to print on a terminal. Pure.

A file name may hold any byte but ``/`` and NUL: an ESC (``\\x1b``) in a name that a command prints
would make the terminal run an escape sequence (recolour, retitle, move the cursor and overwrite what the
user reads, or on some terminals worse), and a carriage return would print the rest of the line over its
start. Printed paths, tags and messages show such characters as Python escapes instead (``\\x1b``,
``\\r``); a newline and a tab are kept where the text is a multi-line message.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories never printed raw: control characters, and the format characters that reorder
#: text (bidirectional overrides, as in "Trojan Source").
_HIDDEN = ("Cc", "Cf")


def printable(text: str, keep: str = "") -> str:
    """``text`` with each control or format character (but those in ``keep``) shown as its escape."""
    if text.isprintable():  # the common case, in C: no character to look at
        return text
    return "".join(
        c
        if c in keep or unicodedata.category(c) not in _HIDDEN
        else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def printable_message(text: str) -> str:
    """:func:`printable` for a message of several lines: its newlines and tabs are kept."""
    return printable(text, keep="\n\t")
