"""``--metadata table.csv|parquet``: metadata for images not named like BBBC006.

The table has a ``path`` column (relative paths are relative to the table's folder; a zip member is
``archive.zip/member``) and any of ``plate``, ``well``, ``site``, ``channel``, ``z``. Every other column
is a tag: ``key=value`` on each image, filterable in both stores (``mae-search query --tag key=value``).
A table value replaces what the file name says; an empty cell says nothing. Rows whose file is not
found are counted and reported by the build.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from indexer.core.errors import ConfigError
from indexer.core.records import ImageMeta, normalise_channel, normalise_tags, normalise_well
from indexer.images.metadata_checks import check_columns, header_columns, whole_number

KNOWN = ("path", "plate", "well", "site", "channel", "z")


def path_key(path: str, base: Path | None = None) -> str:
    """A path as a lookup key: absolute and normalised (a zip member: the archive's path + ``/member``).

    Relative paths are taken from ``base`` (the table's folder), else from the current directory.
    """
    text = str(path).replace("\\", "/")
    member = ""
    cut = text.lower().find(".zip/")
    if cut >= 0:
        text, member = text[: cut + 4], text[cut + 4 :]
    p = Path(text)
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return os.path.normpath(str(p.resolve())) + member


@dataclass
class MetadataTable:
    """The rows of a metadata table by :func:`path_key`; ``used`` collects the keys that matched an image."""

    source: Path
    rows: dict[str, ImageMeta]
    used: set[str] = field(default_factory=set)

    def apply(self, path: str, meta: ImageMeta) -> ImageMeta:
        """``meta`` of the image at ``path`` with the table's values over it (unchanged if no row)."""
        key = path_key(path)
        row = self.rows.get(key)
        if row is None:
            return meta
        self.used.add(key)
        given = {
            name: getattr(row, name)
            for name in ("plate", "well", "row", "column", "site", "channel", "z")
            if getattr(row, name) is not None
        }
        return replace(meta, **given, tags=row.tags)

    @property
    def unmatched(self) -> list[str]:
        """Table paths that matched no image (so far), sorted."""
        return sorted(set(self.rows) - self.used)


def _int(value: str, column: str, line: int, source: Path) -> int:
    return whole_number(value, column, line, source)  # finite, whole and in range, or exit 2 naming the row


def load_metadata_table(source: Path) -> MetadataTable:
    """Read a CSV or parquet metadata table.

    Raises
    ------
    ConfigError
        The file cannot be read, has no ``path`` column, repeats a path, or holds a value that is not
        a number where one is needed (site, z).
    """
    import pandas as pd

    source = Path(source)
    try:
        if source.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(source)
            df = df.astype(object).where(df.notna(), "").astype(str)
        else:
            df = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (OSError, ValueError, ImportError) as e:
        raise ConfigError(f"cannot read the metadata table {source}: {e}".splitlines()[0]) from e
    df.columns = [str(c).strip() for c in df.columns]
    check_columns(header_columns(source) or list(df.columns), KNOWN, source)
    if "path" not in df.columns:
        raise ConfigError(
            f"the metadata table {source} has no 'path' column (columns: {', '.join(df.columns)}); it needs "
            "path and any of plate, well, site, channel, z, plus tag columns"
        )
    base = source.resolve().parent
    extra = [c for c in df.columns if c not in KNOWN]
    rows: dict[str, ImageMeta] = {}
    for line, rec in enumerate(df.to_dict("records"), start=2):  # line 1 is the header
        values = {k: str(v).strip() for k, v in rec.items()}
        if not values["path"]:
            raise ConfigError(f"{source}, row {line}: empty path")
        key = path_key(values["path"], base)
        if key in rows:
            raise ConfigError(f"{source}, row {line}: the path {values['path']!r} is listed twice")
        meta: dict = {}
        if values.get("plate"):
            meta["plate"] = values["plate"]
        if values.get("well"):
            try:
                well = normalise_well(values["well"])
                meta.update(well=well, row=well[0], column=int(well[1:]))
            except ValueError:
                meta["well"] = values["well"]  # a well name of another layout: kept as it is
        if values.get("site"):
            meta["site"] = _int(values["site"], "site", line, source)
        if values.get("channel"):
            try:
                meta["channel"] = normalise_channel(values["channel"])
            except ValueError:
                meta["channel"] = values["channel"]  # e.g. DAPI
        if values.get("z"):
            meta["z"] = _int(values["z"], "z", line, source)
        meta["tags"] = normalise_tags({c: values[c] for c in extra if values.get(c)})
        rows[key] = ImageMeta(**meta)
    return MetadataTable(source, rows)
