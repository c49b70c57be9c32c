"""``--metadata table.csv|parquet``: metadata for images not named like BBBC006.

The table has a ``path`` column (a relative path is read relative to the table's folder, else to the
working directory, whichever names an image found; a zip member is ``archive.zip/member``) and any of
``plate``, ``well``, ``site``, ``channel``, ``z``. Every other column is a tag: ``key=value`` on each
image, filterable in both stores (``mae-search query --tag key=value``). A table value replaces what
the file name says; an empty cell says nothing. Rows whose file is not found are counted and reported
by the build; a table none of whose rows names an image found stops the build (exit 2).
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


#: How a table row's path was read, as :meth:`MetadataTable.rules` names it.
RULES = ("absolute", "table folder", "working directory")


@dataclass
class MetadataTable:
    """The rows of a metadata table by :func:`path_key` (relative paths read from the table's folder).

    ``given`` keeps each row's path as written; ``from_cwd`` maps the key of a relative path read from
    the working directory to its row's key, for tables written next to the data but with paths typed
    from where the build runs. ``used`` collects the rows that matched an image, with the rule that did.
    """

    source: Path
    rows: dict[str, ImageMeta]
    given: dict[str, str] = field(default_factory=dict)
    from_cwd: dict[str, str] = field(default_factory=dict)
    used: dict[str, str] = field(default_factory=dict)

    def _find(self, path: str) -> tuple[str, str] | None:
        """The row key for the image at ``path`` and the rule that matched it; None without a row."""
        key = path_key(path)
        if key in self.rows:
            text = self.given.get(key, "")
            absolute = Path(text.replace("\\", "/")).is_absolute()
            return key, "absolute" if absolute else "table folder"
        row = self.from_cwd.get(key)
        return (row, "working directory") if row is not None else None

    def has(self, path: str) -> bool:
        """True when a row describes the image at ``path``."""
        return self._find(path) is not None

    def apply(self, path: str, meta: ImageMeta) -> ImageMeta:
        """``meta`` of the image at ``path`` with the table's values over it (unchanged if no row)."""
        found = self._find(path)
        if found is None:
            return meta
        key, rule = found
        self.used[key] = rule
        row = self.rows[key]
        given = {
            name: getattr(row, name)
            for name in ("plate", "well", "row", "column", "site", "channel", "z")
            if getattr(row, name) is not None
        }
        return replace(meta, **given, tags=row.tags)

    @property
    def unmatched(self) -> list[str]:
        """Table paths that matched no image (so far), sorted."""
        return sorted(set(self.rows) - set(self.used))

    def rules(self) -> dict[str, int]:
        """How many rows matched by each rule of :data:`RULES` (only the rules that matched any)."""
        counts = {rule: 0 for rule in RULES}
        for rule in self.used.values():
            counts[rule] += 1
        return {rule: n for rule, n in counts.items() if n}

    def report(self) -> dict:
        """What the build says of the table: ``{table, rows, matched, rules}``, JSON-ready."""
        return {
            "table": str(self.source),
            "rows": len(self.rows),
            "matched": len(self.used),
            "rules": self.rules(),
        }

    def describe(self) -> str:
        """One line for people: how many rows matched, and how their paths were read."""
        where = {
            "absolute": "by absolute path",
            "table folder": f"relative to the table's folder {self.source.resolve().parent}",
            "working directory": f"relative to the working directory {Path.cwd()}",
        }
        how = "; ".join(f"{n} {where[r]}" for r, n in self.rules().items())
        return f"metadata table {self.source}: {len(self.used)} of {len(self.rows)} rows matched an image" + (
            f" ({how})" if how else ""
        )

    def nothing_matched(self, found: list[str], total: int) -> str:
        """The message of a build none of whose ``total`` images has a row: three table paths beside three
        images ``found``, and the two places a relative path is read from."""
        table = [self.given.get(k, k) for k in list(self.rows)[:3]]
        width = max(len("table path"), *(len(t) for t in table))
        lines = [f"  {'table path'.ljust(width)}  image found"]
        for i in range(max(len(table), len(found[:3]))):
            left = table[i] if i < len(table) else ""
            right = found[i] if i < len(found) else ""
            lines.append(f"  {left.ljust(width)}  {right}")
        return (
            f"none of the {len(self.rows)} paths in the metadata table {self.source} names one of the "
            f"{total} images found; a relative path is read from the table's folder "
            f"({self.source.resolve().parent}) or from the working directory ({Path.cwd()}):\n"
            + "\n".join(lines)
            + "\nWrite the path column relative to one of those folders (or absolute) and run again."
        )


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
    given: dict[str, str] = {}
    from_cwd: dict[str, str] = {}  # a relative path read from the working directory -> its row's key
    for line, rec in enumerate(df.to_dict("records"), start=2):  # line 1 is the header
        values = {k: str(v).strip() for k, v in rec.items()}
        if not values["path"]:
            raise ConfigError(f"{source}, row {line}: empty path")
        key = path_key(values["path"], base)
        if key in rows:
            raise ConfigError(f"{source}, row {line}: the path {values['path']!r} is listed twice")
        given[key] = values["path"]
        cwd_key = path_key(values["path"])
        if cwd_key != key:
            from_cwd.setdefault(cwd_key, key)
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
    # The table-folder reading wins where a path names a file under both readings.
    from_cwd = {k: row for k, row in from_cwd.items() if k not in rows}
    return MetadataTable(source, rows, given, from_cwd)
