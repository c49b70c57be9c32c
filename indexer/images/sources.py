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

import numpy as np

from indexer.bbbc006.names import name_problem, parse_path
from indexer.core.config import SourceConfig
from indexer.core.errors import ConfigError, DecodeError
from indexer.core.records import ImageMeta

IMAGE_SUFFIXES = (".tif", ".tiff")
_PLANE_RE = re.compile(r"^(.*)#(\d+)$")


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One image to index. ``path`` is what users see (``data.zip/folder/file.tif`` for zip members).

    An item is slotted and a file's reader holds the path string, not a :class:`~pathlib.Path` with its
    parts. A build keeps its listing as a :class:`~indexer.images.source_list.SourceList`, which makes the
    items again on access instead of holding one per image.
    """

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


class FileReader:
    """``read()`` of one file: its bytes. Holds the path as one string (shared with the display path
    when the name is valid UTF-8), a few dozen bytes instead of a ``Path``'s bound ``read_bytes``.
    Two readers of the same path are equal."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def __eq__(self, other: object) -> bool:
        return type(other) is FileReader and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"FileReader({self.path!r})"


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

    def read(self, member: str) -> bytes:
        """The bytes of ``member``."""
        return self._zip().read(member)

    def reader(self, member: str) -> ZipMemberReader:
        """``read()`` of one member."""
        return ZipMemberReader(self, member)


class ZipMemberReader:
    """``read()`` of one zip member: its bytes, through the archive's per-thread handles. Two readers of
    the same member of the same opened archive are equal."""

    __slots__ = ("archive", "member")

    def __init__(self, archive: _ZipReader, member: str) -> None:
        self.archive = archive
        self.member = member

    def __call__(self) -> bytes:
        return self.archive.read(self.member)

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is ZipMemberReader and other.archive is self.archive and other.member == self.member
        )

    def __hash__(self) -> int:
        return hash((id(self.archive), self.member))

    def __repr__(self) -> str:
        return f"ZipMemberReader({str(self.archive.path)!r}, {self.member!r})"


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


def _meta(display: str, parse_from: str, table) -> ImageMeta:
    meta = parse_path(parse_from)
    return table.apply(display, meta) if table is not None else meta


def _path_hash(real: str) -> int:
    """The key of a real path among the files listed (a hash, so that the path is not held twice)."""
    return hash(real)


class _SeenFiles:
    """The files (and zips) listed so far, by real path, without a second copy of each path.

    A listing reaches a file twice only through links or overlapping paths given, but it must remember
    every file to tell. A file listed under its real path (an absolute path given, no link on the way:
    the usual case) is remembered by its display path, the listed item's own string. Any other is
    remembered by a hash of its real path -> the display path it was listed under (with the path it was
    opened by when that differs); a hash two real paths share is told apart by resolving the first one's
    path again, so two files are never taken for one, and the few real paths whose hash was taken are
    kept whole.
    """

    def __init__(self) -> None:
        # A display path that is its file's real path -> None; a real path's hash -> how it was listed.
        self._seen: dict[str | int, str | tuple[str, str] | None] = {}
        self._collided: dict[str, str] = {}  # real path -> display path, for real paths whose hash was taken

    def first(self, real: str, display: str, opened: str) -> str | None:
        """The display path under which the file at ``real`` was listed before; else ``None``, and it is
        noted as listed under ``display`` (opened as ``opened``)."""
        if real in self._seen:  # a string key: listed under its real path
            return real
        key = _path_hash(real)
        seen = self._seen.get(key)
        if seen is not None:
            first, first_opened = (seen, seen) if isinstance(seen, str) else seen
            if os.path.realpath(first_opened) == real:
                return first
        if real in self._collided:
            return self._collided[real]
        if real == display == opened:
            self._seen[display] = None
        elif seen is None:
            self._seen[key] = display if opened == display else (display, opened)
        else:
            self._collided[real] = display
        return None


class _Lister:
    """Lists the images under the paths of one :class:`SourceConfig`, each file once."""

    def __init__(self, config: SourceConfig, problems: list[SourceProblem], table=None) -> None:
        self.config = config
        self.problems = problems
        self.table = table
        self.seen_files = _SeenFiles()
        self.seen_dirs: dict[str, str] = {}
        # The folder of the files listed last, and its real path.
        self._folder: tuple[str | None, str] = (None, "")

    def _first_time(self, real: str, display: str, opened: str) -> bool:
        first = self.seen_files.first(real, display, opened)
        if first is not None:
            reason = f"the same file as {first}, reached twice through the paths given; indexed once"
            self.problems.append(SourceProblem(display, reason, "duplicate"))
            return False
        return True

    def _realpath(self, path: str) -> str:
        """``os.path.realpath(path)``, resolving the folder once for the files listed from it in a row
        (a file that is not a link is its real folder + its name)."""
        head, tail = os.path.split(path)
        if not tail or tail in (".", "..") or os.path.islink(path):
            return os.path.realpath(path)
        if head != self._folder[0]:
            self._folder = (head, os.path.realpath(head))
        return os.path.join(self._folder[1], tail)

    def _select(self, display: str, meta: ImageMeta) -> bool:
        # A metadata table's row replaces what the name says, so the name need not be a BBBC006 one.
        listed = self.table is not None and self.table.has(display)
        problem = None if listed else name_problem(display)
        if problem:
            self.problems.append(SourceProblem(display, problem))
            return False
        if self.config.channels and meta.channel is None:
            self.problems.append(SourceProblem(
                display, f"no BBBC006 channel in the name; --channels {','.join(self.config.channels)} selects "
                "parsed names only", "excluded"))  # fmt: skip
            return False
        return _wanted(meta, self.config)

    def file(self, path: Path | str, display: str) -> Iterator[SourceItem]:
        text = str(path)
        real = self._realpath(text)
        if not self._first_time(real, display, text):
            return
        meta = _meta(display, display_path(real), self.table)
        if self._select(display, meta):
            yield SourceItem(display, FileReader(display if text == display else text), meta)

    def zip(self, path: Path, display: str) -> Iterator[SourceItem]:
        if not self._first_time(os.path.realpath(path), display, str(path)):
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
            meta = _meta(member, member, self.table)
            if self._select(member, meta):
                yield SourceItem(member, reader.reader(name), meta)

    def folder(self, root: Path) -> Iterator[SourceItem]:
        """Walk ``root``, following links to folders once each (a loop, or a second link to a folder
        already walked, is listed as a duplicate), in sorted order."""
        # Strings, not Paths: the whole folder's names are held until sorted (52,224 for a full plate),
        # and the display path is the same string object as the path whenever the name is valid UTF-8.
        found: list[str] = []
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
            # What str(Path(dirpath) / name) gives, without a Path per file ("" for ".", "/" for "/").
            prefix = str(Path(dirpath) / "_")[:-1]
            for name in filenames:
                if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES + (".zip",):
                    continue
                p = prefix + name
                if not os.path.exists(p):
                    self.problems.append(SourceProblem(display_path(p), "unreadable: broken link"))
                    continue
                found.append(p)
        # Sorted by display path, then path (two stable sorts: no pair held per file).
        found.sort()
        found.sort(key=display_path)
        for p in found:
            shown = display_path(p)
            if p.lower().endswith(".zip"):
                yield from self.zip(Path(p), shown)
            else:
                yield from self.file(p, shown)


def iter_sources(
    config: SourceConfig, problems: list[SourceProblem] | None = None, table=None
) -> Iterator[SourceItem]:
    """Yield every image under ``config.paths`` (folders recursively, zips in place), sorted by path.

    Each file is listed once, however many of the paths given reach it. Links to folders are followed,
    each real folder once (so a link loop ends). What is found but not yielded (broken zips, unsafe zip
    members, near-miss BBBC006 names, broken links, duplicates, names without a channel under a
    ``--channels`` selection) is appended to ``problems``, each with its :attr:`SourceProblem.kind`.
    Paths are :func:`display_path` strings: valid UTF-8 whatever the file names are.
    ``table`` (a :class:`~indexer.images.metadata_table.MetadataTable`) puts its values over the names'; by
    default ``config.metadata`` is loaded.

    Raises
    ------
    ConfigError
        If a given path does not exist.
    """
    problems = problems if problems is not None else []
    for root in config.paths:
        if not root.exists():
            raise ConfigError(f"no such file or folder: {display_path(root)}")
    if table is None and config.metadata is not None:
        from indexer.images.metadata_table import load_metadata_table

        table = load_metadata_table(config.metadata)
    lister = _Lister(config, problems, table)
    for root in config.paths:
        if root.is_file():
            if root.suffix.lower() == ".zip":
                yield from lister.zip(root, display_path(root))
            else:
                yield from lister.file(root, display_path(root))
            continue
        yield from lister.folder(root)


def describe_search(config: SourceConfig) -> str:
    """Say what a listing of ``config`` looked for, for the message of a build that found nothing."""
    where = ", ".join(str(p) for p in config.paths)
    text = (
        f"looked in {where} (folders recursively) for {'/'.join('*' + s for s in IMAGE_SUFFIXES)} files "
        "and .zip archives holding them"
    )
    wanted = []
    if config.channels:
        wanted.append("channel " + " or ".join(config.channels))
    if config.z:
        wanted.append("z " + " or ".join(str(z) for z in config.z))
    if wanted:
        text += ", keeping only " + " and ".join(wanted) + " (from the BBBC006 names)"
    return text


def plane_path(path: str, index: int) -> str:
    """The recorded path of plane ``index`` of a multi-plane file: ``file.tif#index``."""
    return f"{path}#{index}"


def stack_file(path: str | None) -> str | None:
    """The file a plane's recorded path comes from (``file.tif`` of ``file.tif#2``); None for an image
    that is a file of its own. The planes of one file are one field of view: one group."""
    m = _PLANE_RE.match(path or "")
    return m.group(1) if m else None


def load_image(path: str, expected_id: int | None = None) -> np.ndarray:
    """Read and decode the image an index recorded at ``path``: a file, a zip member, or one plane of
    a stack (``file.tif#index``).

    ``expected_id`` is the id the index gave the image. Ids derive from the file's bytes
    (:func:`~indexer.images.decode.content_id`, :func:`~indexer.images.decode.plane_id`), so a file
    replaced since the build by another valid image is told apart from the one indexed.

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path`` any more (moved since the build?).
    DecodeError
        If the file is no longer a usable image; :class:`ChangedImageError` if its bytes are no longer
        those of image ``expected_id``.
    """
    from indexer.images.decode import decode_plane, decode_tiff

    data, index = _read_checked(path, expected_id)
    if index is None:
        return decode_tiff(data)
    plane = decode_plane(data, index)  # that plane's page alone, not the stack
    if plane is None:
        raise FileNotFoundError(2, f"the file has no plane {index}", path)
    return plane.image


def image_bands(path: str, expected_id: int | None = None, min_side: int | None = None) -> Iterator:
    """The image :func:`load_image` reads, as bands of rows decoded one at a time
    (:func:`indexer.images.bands.iter_bands`; ``min_side``: from a pyramid level where the file has
    one): what a thumbnail of a large image needs.

    Raises
    ------
    FileNotFoundError, DecodeError
        As :func:`load_image`; the file is read and its id checked before this returns, decode errors
        come while iterating.
    """
    from indexer.images.bands import iter_bands

    data, index = _read_checked(path, expected_id)

    def bands() -> Iterator:
        found = False
        for band in iter_bands(data, index, min_side=min_side):
            found = True
            yield band
        if not found:
            raise FileNotFoundError(2, f"the file has no plane {index}", path)

    return bands()


def _read_checked(path: str, expected_id: int | None) -> tuple[bytes, int | None]:
    """The bytes of the file behind ``path`` and the plane it names (None: the whole file), their id
    checked against ``expected_id``."""
    from indexer.images.decode import content_id, plane_id

    m = _PLANE_RE.match(path)
    if m and not Path(path).is_file():
        index = int(m.group(2))
        data = read_path(m.group(1))
        _check_same(path, expected_id, lambda: plane_id(content_id(data), index))
        return data, index
    data = read_path(path)
    _check_same(path, expected_id, lambda: content_id(data))
    return data, None


class ChangedImageError(DecodeError):
    """The file at an indexed path holds other bytes than the image indexed there."""


def _check_same(path: str, expected_id: int | None, actual_id: Callable[[], int]) -> None:
    if expected_id is not None and expected_id >= 0 and actual_id() != expected_id:
        raise ChangedImageError(
            f"{path} changed since it was indexed (its content is no longer that of image {expected_id}); "
            "rebuild the index to use the new file"
        )


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
    raise FileNotFoundError(2, "not found (moved since the build?)", path)
