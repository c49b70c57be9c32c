"""Find images in folders, zip files and single files; yield them in a stable, sorted order.

Each image is a :class:`SourceItem`: a display path, a ``read()`` that returns the file's bytes, and
the metadata parsed from the path. Zip files are read in place, member by member, without extracting
them. Reading is separate from decoding so that a worker pool can do both off the main thread.
"""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from indexer.bbbc006.names import ImageMeta, parse_path
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
    """Something found that cannot be indexed (a broken zip, an unsafe member name)."""

    path: str
    reason: str


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
    if config.channels and meta.channel is not None and meta.channel not in config.channels:
        return False
    if config.z and meta.z not in config.z:
        return False
    return True


def _iter_zip(path: Path, config: SourceConfig, problems: list[SourceProblem]) -> Iterator[SourceItem]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(i.filename for i in zf.infolist() if not i.is_dir())
    except (zipfile.BadZipFile, OSError) as e:
        problems.append(SourceProblem(str(path), f"cannot open zip: {e}"))
        return
    reader = _ZipReader(path)
    for name in names:
        if not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        unsafe = _unsafe_member(name)
        display = f"{path}/{name}"
        if unsafe:
            problems.append(SourceProblem(display, unsafe))
            continue
        meta = parse_path(display)
        if _wanted(meta, config):
            yield SourceItem(display, reader.reader(name), meta)


def _file_item(path: Path) -> SourceItem:
    return SourceItem(str(path), path.read_bytes, parse_path(str(path.resolve())))


def iter_sources(config: SourceConfig, problems: list[SourceProblem] | None = None) -> Iterator[SourceItem]:
    """Yield every image under ``config.paths`` (folders recursively, zips in place), sorted by path.

    Problems found while listing (broken zips, unsafe zip members) are appended to ``problems``.

    Raises
    ------
    ConfigError
        If a given path does not exist.
    """
    problems = problems if problems is not None else []
    for root in config.paths:
        if not root.exists():
            raise ConfigError(f"no such file or folder: {root}")
    for root in config.paths:
        if root.is_file():
            if root.suffix.lower() == ".zip":
                yield from _iter_zip(root, config, problems)
            else:
                item = _file_item(root)
                if _wanted(item.meta, config):
                    yield item
            continue
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                if p.is_symlink() and p.suffix.lower() in IMAGE_SUFFIXES + (".zip",):
                    problems.append(SourceProblem(str(p), "unreadable: broken link"))
                continue
            if p.suffix.lower() == ".zip":
                yield from _iter_zip(p, config, problems)
            elif p.suffix.lower() in IMAGE_SUFFIXES:
                item = _file_item(p)
                if _wanted(item.meta, config):
                    yield item


def read_path(path: str) -> bytes:
    """Read the bytes of an indexed image from its recorded path (a file, or ``archive.zip/member``).

    Raises
    ------
    FileNotFoundError
        If neither a file nor a zip member exists at ``path``.
    """
    p = Path(path)
    if p.is_file():
        return p.read_bytes()
    lowered = path.lower()
    cut = lowered.find(".zip/")
    if cut >= 0:
        archive, member = path[: cut + 4], path[cut + 5 :]
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    raise FileNotFoundError(f"indexed image not found: {path} (moved since the build?)")
