"""Find images in folders, zip files and single files; yield them in a stable, sorted order.

Each image is a :class:`SourceItem`: a display path, a ``read()`` that returns the file's bytes, and
the metadata parsed from the path. Zip files are read in place, member by member, without extracting
them. Reading is separate from decoding so that a worker pool can do both off the main thread.
"""

from __future__ import annotations

import os
import re
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from indexer.bbbc006 import ImageMeta, name_problem, parse_path
from indexer.config import SourceConfig
from indexer.errors import ConfigError

IMAGE_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class SourceItem:
    """One image to index. ``path`` is what users see (``data.zip/folder/file.tif`` for zip members)."""

    path: str
    read: Callable[[], bytes]
    meta: ImageMeta


@dataclass(frozen=True)
class SourceProblem:
    """Something found while listing that is not indexed, and why.

    ``kind`` says how a build counts it: ``rejected`` (cannot be indexed: a broken zip, an unsafe
    member name, a near-miss BBBC006 name; the result is incomplete), ``duplicate`` (the same file
    reached twice through the paths given, or a link to a folder already listed: indexed once), or
    ``excluded`` (left out by a ``--channels`` selection because its name has no channel).
    """

    path: str
    reason: str
    kind: str = "rejected"


def display_path(path: Path | str) -> str:
    """The path as stored and shown: valid UTF-8 whatever the file system holds.

    A file name that is not valid UTF-8 reaches Python with each undecodable byte as a lone surrogate
    (``surrogateescape``), which Redis, parquet and UTF-8 CSV refuse. Such bytes are written as
    ``\\xNN`` (backslash, x, two lower-case hex digits), e.g. ``caf\\xe9.tif`` for the Latin-1 name
    ``café.tif``; :func:`read_path` undoes it. Valid names are returned unchanged.
    """
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


_BYTE_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")


def file_path(display: str) -> Path:
    """The file a :func:`display_path` names (the literal path when it exists, else unescaped)."""
    p = Path(display)
    if p.exists() or "\\x" not in display:
        return p
    raw = _BYTE_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), display.encode("utf-8"))
    return Path(os.fsdecode(raw))


class _ZipReader:
    """Reads members of one zip; one open handle per thread, since a shared handle serialises reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _zip(self) -> zipfile.ZipFile:
        zf = getattr(self._local, "zf", None)
        if zf is None:
            zf = self._local.zf = zipfile.ZipFile(self.path)
        return zf

    def reader(self, member: str) -> Callable[[], bytes]:
        return lambda: self._zip().read(member)


def _unsafe_member(name: str) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "zip member has an absolute path (refused for safety)"
    if ".." in p.parts:
        return "zip member path contains '..' (refused for safety)"
    return None


def _wanted(meta: ImageMeta, config: SourceConfig) -> bool:
    if config.channels and meta.channel not in config.channels:
        return False
    if config.z and meta.z not in config.z:
        return False
    return True


class _Lister:
    """Lists the images under the paths of one :class:`SourceConfig`, each file once."""

    def __init__(self, config: SourceConfig, problems: list[SourceProblem]) -> None:
        self.config = config
        self.problems = problems
        self.seen_files: dict[str, str] = {}  # real path (or zip, member) -> display path listed
        self.seen_dirs: dict[str, str] = {}

    def _first_time(self, key: str, display: str) -> bool:
        first = self.seen_files.get(key)
        if first is not None:
            reason = f"the same file as {first}, reached twice through the paths given; indexed once"
            self.problems.append(SourceProblem(display, reason, "duplicate"))
            return False
        self.seen_files[key] = display
        return True

    def _select(self, display: str, meta: ImageMeta) -> bool:
        problem = name_problem(display)
        if problem:
            self.problems.append(SourceProblem(display, problem))
            return False
        if self.config.channels and meta.channel is None:
            self.problems.append(SourceProblem(
                display, f"no BBBC006 channel in the name; --channels {','.join(self.config.channels)} selects "
                "parsed names only", "excluded"))  # fmt: skip
            return False
        return _wanted(meta, self.config)

    def file(self, path: Path, display: str) -> Iterator[SourceItem]:
        if not self._first_time(os.path.realpath(path), display):
            return
        meta = parse_path(display_path(path.resolve()))
        if self._select(display, meta):
            yield SourceItem(display, path.read_bytes, meta)

    def zip(self, path: Path, display: str) -> Iterator[SourceItem]:
        if not self._first_time(os.path.realpath(path), display):
            return
        try:
            with zipfile.ZipFile(path) as zf:
                names = sorted(i.filename for i in zf.infolist() if not i.is_dir())
        except (zipfile.BadZipFile, OSError) as e:
            self.problems.append(SourceProblem(display, f"cannot open zip: {e}"))
            return
        reader = _ZipReader(path)
        for name in names:
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            unsafe = _unsafe_member(name)
            member = f"{display}/{name}"
            if unsafe:
                self.problems.append(SourceProblem(member, unsafe))
                continue
            meta = parse_path(member)
            if self._select(member, meta):
                yield SourceItem(member, reader.reader(name), meta)

    def folder(self, root: Path) -> Iterator[SourceItem]:
        """Walk ``root``, following links to folders once each (a loop, or a second link to a folder
        already walked, is listed as a duplicate), in sorted order."""
        found: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            shown = display_path(dirpath)
            if real in self.seen_dirs:
                self.problems.append(SourceProblem(
                    shown, f"the same folder as {self.seen_dirs[real]}, already listed (given twice, or a link); "
                    "its images are listed once", "duplicate"))  # fmt: skip
                dirnames[:] = []
                continue
            self.seen_dirs[real] = shown
            dirnames.sort()
            for name in filenames:
                p = Path(dirpath) / name
                suffix = p.suffix.lower()
                if suffix not in IMAGE_SUFFIXES + (".zip",):
                    continue
                if not p.exists():
                    self.problems.append(SourceProblem(display_path(p), "unreadable: broken link"))
                    continue
                found.append((display_path(p), p))
        for shown, p in sorted(found):
            if p.suffix.lower() == ".zip":
                yield from self.zip(p, shown)
            else:
                yield from self.file(p, shown)


def iter_sources(config: SourceConfig, problems: list[SourceProblem] | None = None) -> Iterator[SourceItem]:
    """Yield every image under ``config.paths`` (folders recursively, zips in place), sorted by path.

    Each file is listed once, however many of the paths given reach it. Links to folders are followed,
    each real folder once (so a link loop ends). What is found but not yielded (broken zips, unsafe zip
    members, near-miss BBBC006 names, broken links, duplicates, names without a channel under a
    ``--channels`` selection) is appended to ``problems``, each with its :attr:`SourceProblem.kind`.
    Paths are :func:`display_path` strings: valid UTF-8 whatever the file names are.

    Raises
    ------
    ConfigError
        If a given path does not exist.
    """
    problems = problems if problems is not None else []
    for root in config.paths:
        if not root.exists():
            raise ConfigError(f"no such file or folder: {display_path(root)}")
    lister = _Lister(config, problems)
    for root in config.paths:
        if root.is_file():
            if root.suffix.lower() == ".zip":
                yield from lister.zip(root, display_path(root))
            else:
                yield from lister.file(root, display_path(root))
            continue
        yield from lister.folder(root)


def read_path(path: str) -> bytes:
    """Read the bytes of an indexed image from its recorded path (a file, or ``archive.zip/member``).

    Raises
    ------
    FileNotFoundError
        If neither a file nor a zip member exists at ``path``.
    """
    p = file_path(path)
    if p.is_file():
        return p.read_bytes()
    lowered = path.lower()
    cut = lowered.find(".zip/")
    if cut >= 0:
        archive, member = path[: cut + 4], path[cut + 5 :]
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    raise FileNotFoundError(f"indexed image not found: {path} (moved since the build?)")
