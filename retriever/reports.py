"""``mae-eval`` report folders the explorer links to, and the only files of each it serves.

A report folder is served file by file, never as a directory: only the files the report wrote
(report.json's ``files``, or :data:`REPORT_FILES` for a report written before it listed them) that are
regular files (no symlink, no subfolder). A notes.txt, a key or a link to /etc/passwd left in the folder
is a 404, whether the folder was found beside the index or given with ``--reports``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from indexer.core.safe_files import open_regular

#: What ``mae-eval robustness`` writes (:func:`eval.report.write_report`); figures are inside the HTML.
REPORT_FILES = ("report.html", "report.json", "rows.csv", "summary.csv")
#: Kinds of file a report may list; anything else it lists is ignored.
SERVED_SUFFIXES = frozenset({".html", ".json", ".csv", ".png", ".svg"})


def _report_json(folder: Path) -> dict:
    try:
        obj = json.loads((Path(folder) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def report_index_uid(folder: Path) -> str | None:
    """The ``index_uid`` of the index a ``mae-eval`` report folder was made from (its report.json's
    ``index.index_uid``); None when it does not say (an older report) or cannot be read."""
    index = _report_json(folder).get("index")
    uid = index.get("index_uid") if isinstance(index, dict) else None
    return uid if isinstance(uid, str) else None


def find_reports(index_dir: Path | None, extra: list[Path], index_uid: str | None = None) -> list[Path]:
    """Report folders: those given, and any folder beside the index holding ``report.html`` that was made
    from this index (its report.json's ``index_uid`` is ``index_uid``): a folder of several indexes and
    their reports lists each index's own."""
    found = [Path(p).resolve() for p in extra]
    if index_dir is not None:
        parent = Path(index_dir).resolve().parent
        try:
            found += sorted(
                d
                for d in parent.iterdir()
                if d.is_dir()
                and (d / "report.html").is_file()
                and index_uid is not None
                and report_index_uid(d) == index_uid
            )
        except OSError:
            pass
    out = []
    for d in found:
        if d not in out:
            out.append(d)
    return out


def listed_files(folder: Path) -> frozenset[str]:
    """The names a report folder may serve: report.json's ``files`` (plain names of a served kind), or
    :data:`REPORT_FILES` where report.json lists none (an older report, or none at all)."""
    files = _report_json(folder).get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        files = REPORT_FILES
    return frozenset(
        f
        for f in files
        if f not in ("", ".", "..")
        and "/" not in f
        and "\\" not in f
        and "\x00" not in f
        and Path(f).suffix.lower() in SERVED_SUFFIXES
    )


def read_report_file(folder: Path, name: str) -> bytes | None:
    """The bytes of report file ``name`` of ``folder``; None unless the report lists it and it is a
    regular file in the folder itself (opened without following a symlink, so a link swapped in after
    the check is refused too)."""
    if name not in listed_files(folder):
        return None
    try:
        # One opener for untrusted folders: no link followed, regular files only, no wait on a FIFO.
        fd = open_regular(Path(folder) / name, follow=False)
    except OSError:  # NotARegularFile is one
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()
