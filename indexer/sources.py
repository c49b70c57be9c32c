"""Find images in folders, zip files and single files; yield them in a stable, sorted order.

Each image is a :class:`SourceItem`: a display path, a ``read()`` that returns the file's bytes, and
the metadata parsed from the path. Zip files are read in place, member by member, without extracting
them. Reading is separate from decoding so that a worker pool can do both off the main thread.
"""

from __future__ import annotations

import re
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from indexer.bbbc006.names import ImageMeta, parse_path
from indexer.config import SourceConfig
from indexer.errors import ConfigError

IMAGE_SUFFIXES = (".tif", ".tiff")
_PLANE_RE = re.compile(r"^(.*)#(\d+)$")


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


def _meta(display: str, parse_from: str, table) -> ImageMeta:
    meta = parse_path(parse_from)
    return table.apply(display, meta) if table is not None else meta


def _iter_zip(
    path: Path, config: SourceConfig, problems: list[SourceProblem], table=None
) -> Iterator[SourceItem]:
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
        meta = _meta(display, display, table)
        if _wanted(meta, config):
            yield SourceItem(display, reader.reader(name), meta)


def _file_item(path: Path, table=None) -> SourceItem:
    return SourceItem(str(path), path.read_bytes, _meta(str(path), str(path.resolve()), table))


def iter_sources(
    config: SourceConfig, problems: list[SourceProblem] | None = None, table=None
) -> Iterator[SourceItem]:
    """Yield every image under ``config.paths`` (folders recursively, zips in place), sorted by path.

    Problems found while listing (broken zips, unsafe zip members) are appended to ``problems``.
    ``table`` (a :class:`~indexer.metadata_table.MetadataTable`) puts its values over the names'; by
    default ``config.metadata`` is loaded.

    Raises
    ------
    ConfigError
        If a given path does not exist.
    """
    problems = problems if problems is not None else []
    for root in config.paths:
        if not root.exists():
            raise ConfigError(f"no such file or folder: {root}")
    if table is None and config.metadata is not None:
        from indexer.metadata_table import load_metadata_table

        table = load_metadata_table(config.metadata)
    for root in config.paths:
        if root.is_file():
            if root.suffix.lower() == ".zip":
                yield from _iter_zip(root, config, problems, table)
            else:
                item = _file_item(root, table)
                if _wanted(item.meta, config):
                    yield item
            continue
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                if p.is_symlink() and p.suffix.lower() in IMAGE_SUFFIXES + (".zip",):
                    problems.append(SourceProblem(str(p), "unreadable: broken link"))
                continue
            if p.suffix.lower() == ".zip":
                yield from _iter_zip(p, config, problems, table)
            elif p.suffix.lower() in IMAGE_SUFFIXES:
                item = _file_item(p, table)
                if _wanted(item.meta, config):
                    yield item


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


def load_image(path: str) -> np.ndarray:
    """Read and decode the image an index recorded at ``path``: a file, a zip member, or one plane of
    a stack (``file.tif#index``).

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path`` any more (moved since the build?).
    DecodeError
        If the file is no longer a usable image.
    """
    from indexer.decode import decode_planes, decode_tiff

    m = _PLANE_RE.match(path)
    if m and not Path(path).is_file():
        index = int(m.group(2))
        planes = decode_planes(read_path(m.group(1)))
        if index >= len(planes):
            raise FileNotFoundError(2, f"the file has {len(planes)} planes, no plane {index}", path)
        return planes[index].image
    return decode_tiff(read_path(path))


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
    raise FileNotFoundError(2, "not found (moved since the build?)", path)
