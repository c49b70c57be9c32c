"""The shell commands a markdown page shows: its ```bash blocks, and the ``$ `` lines of its ```console
blocks with the output printed under them. Pure text, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.M | re.S)
#: A trailing comment: whitespace, '#', whitespace. A '#' inside a word (``file.tif#0``) is not one.
_COMMENT = re.compile(r"\s+#\s.*$")
SHELLS = ("bash", "sh", "console")


@dataclass(frozen=True)
class Command:
    """One command as a reader would type it (continuation lines joined), and the output shown under it."""

    text: str
    shown: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Block:
    """A fenced shell block: its language and its commands in order."""

    lang: str
    commands: tuple[Command, ...]


def blocks(markdown: str) -> list[Block]:
    """Every fenced bash/sh/console block of ``markdown``, in order."""
    found = []
    for m in _FENCE.finditer(markdown):
        lang, body = m.group(1), m.group(2)
        if lang in SHELLS:
            found.append(Block(lang, tuple(_console(body) if lang == "console" else _script(body))))
    return found


def section(markdown: str, heading: str) -> str:
    """The text under the ``## heading`` line up to the next heading of level 2 or above ('' if absent)."""
    m = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^#{{1,2}} |\Z)", markdown, re.M | re.S)
    return m.group(1) if m else ""


def _joined(lines: list[str]) -> list[tuple[str, int]]:
    """Join continuation lines (ending in a backslash); return (logical line, index of its last line)."""
    out, buf = [], ""
    for i, line in enumerate(lines):
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1].rstrip() + " "
            continue
        out.append(((buf + line.strip()) if buf else line, i))
        buf = ""
    return out


def _script(body: str) -> list[Command]:
    cmds = []
    for line, _ in _joined(body.splitlines()):
        text = _COMMENT.sub("", line).strip()
        if text and not text.startswith("#"):
            cmds.append(Command(" ".join(text.split())))
    return cmds


def _console(body: str) -> list[Command]:
    cmds: list[Command] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        text = lines[i][2:]
        while text.rstrip().endswith("\\"):
            i += 1
            text = text.rstrip()[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        shown = []
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        cmds.append(Command(" ".join(text.split()), tuple(shown)))
    return cmds


def same_output(shown: tuple[str, ...], printed: str, tol: float = 0.02) -> list[str]:
    """Lines of ``shown`` that ``printed`` does not match, in order: whitespace is not significant,
    decimal numbers may differ by ``tol`` (scores from another CPU's arithmetic), and a build's timing
    ("in 1.6 s (4.5 img/s, cpu bf16)") is not compared."""
    got = [_norm(line) for line in printed.splitlines() if line.strip()]
    missing = []
    for line in shown:
        want = _norm(line)
        if want and not any(_close(want, g, tol) for g in got):
            missing.append(line)
    return missing


#: The timing and the device and precision after it, which may explain itself in parentheses of its own
#: ("cpu fp32 (auto: hidden size 192 < 384, ...)").
_TIMING = re.compile(r"in [\d.]+ s \([\d.]+ img/s, (?:[^()]|\([^()]*\))*\)")


def _norm(line: str) -> list[str]:
    return _TIMING.sub("in TIME", line).split()


def _close(want: list[str], got: list[str], tol: float) -> bool:
    if len(want) != len(got):
        return False
    for a, b in zip(want, got):
        if a == b:
            continue
        if "." in a and "." in b:
            try:
                if abs(float(a) - float(b)) <= tol:
                    continue
            except ValueError:
                pass
        return False
    return True
