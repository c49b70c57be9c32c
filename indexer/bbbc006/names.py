"""BBBC006 file and folder names -> image metadata. Pure: no I/O.

Real names look like ``mcf-z-stacks-03212011_a01_s1_w1248254b0-0193-4e11-8762-62b5d2b86216.tif``:
plate, well (a-p, 01-24), site (1-2), channel (ONE digit glued to a random UUID, so ``w12667264a-…``
is channel 1), UUID. The z-slice is not in the file name: it comes from a parent folder or zip named
``BBBC006_v1_images_z_16``.
"""

from __future__ import annotations

import re
import sys

from indexer.bbbc006.constants import CHANNELS, N_COLUMNS, PLATE_ROWS, SITES, VALID_TEXT, Z_SLICES
from indexer.core.records import ImageMeta, normalise_well

_FILE_RE = re.compile(
    r"^(?P<plate>.+?)_(?P<well>[a-pA-P](?:0[1-9]|1[0-9]|2[0-4]))_s(?P<site>[1-9])"
    r"_w(?P<channel>[1-9])(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"\.[tT][iI][fF][fF]?$"
)
# A name built like a BBBC006 one (plate_<well>_s<site>_w<channel>...) whatever its values: a near miss of
# _FILE_RE ("q25", "a00", "s9", "w3") is refused with a reason instead of indexed without metadata.
_SHAPE_RE = re.compile(
    r"^(?P<plate>.+?)_(?P<well>[A-Za-z]\d{1,3})_s(?P<site>\d+)_w(?P<channel>\d)(?P<rest>.*?)\.[tT][iI][fF][fF]?$"
)

# The z-slice lives in the folder or zip name: BBBC006_v1_images_z_16(.zip). Older links say
# BBBC006_v1_z16_images; accept both spellings.
_Z_RE = re.compile(r"(?:_images_z_(?P<a>\d{1,3})|_z(?P<b>\d{1,3})_images)(?:\.zip)?$", re.IGNORECASE)


def parse_z(parts: list[str] | tuple[str, ...]) -> int | None:
    """Return the z-slice from the innermost folder or zip name that carries one, else ``None``."""
    for part in reversed(parts):
        m = _Z_RE.search(part)
        if m:
            return int(m.group("a") or m.group("b"))
    return None


def parse_path(path: str) -> ImageMeta:
    """Parse a BBBC006 path (a file path, or ``archive.zip/member`` path) into :class:`ImageMeta`.

    A file name that does not follow the BBBC006 pattern gives empty metadata (all ``None``), except
    the z-slice when a parent folder names one.
    """
    parts = [p for p in re.split(r"[\\/]", path) if p]
    if not parts:
        return ImageMeta()
    z = parse_z(parts[:-1])
    m = _FILE_RE.match(parts[-1])
    if not m:
        return ImageMeta(z=z)
    well = sys.intern(normalise_well(m.group("well")))
    return ImageMeta(
        plate=sys.intern(m.group("plate")),
        well=well,
        row=well[0],  # one-character strings are shared by CPython already
        column=int(well[1:]),
        site=int(m.group("site")),
        channel=sys.intern(f"w{m.group('channel')}"),
        z=z,
    )


def name_problem(path: str) -> str | None:
    """Why a path that looks like a BBBC006 image cannot be one, or ``None``.

    A file name built like a BBBC006 name (``plate_<well>_s<site>_w<channel><uuid>.tif``) whose well,
    site or channel is impossible, or a z-slice folder outside 0-33, is a near miss: indexing it
    would give empty or impossible metadata. Names of another shape entirely are not BBBC006 names and
    give ``None`` (they are indexed without metadata).
    """
    parts = [p for p in re.split(r"[\\/]", path) if p]
    if not parts:
        return None
    problems = []
    z = parse_z(parts[:-1])
    if z is not None and z not in Z_SLICES:
        problems.append(f"z-slice {z} is outside {VALID_TEXT['z']}")
    m = _SHAPE_RE.match(parts[-1])
    if m:
        well = m.group("well")
        if well[0].upper() not in PLATE_ROWS or not 1 <= int(well[1:]) <= N_COLUMNS or len(well) != 3:
            problems.append(
                f"well {well!r} is outside {VALID_TEXT['well']} (a letter a-p and two digits 01-24)"
            )
        if int(m.group("site")) not in SITES:
            problems.append(f"site s{m.group('site')} is not one of {', '.join(f's{s}' for s in SITES)}")
        if int(m.group("channel")) not in CHANNELS:
            problems.append(
                f"channel w{m.group('channel')} is not one of {', '.join(f'w{c}' for c in CHANNELS)}"
            )
    if not problems:
        return None
    return "looks like a BBBC006 name but " + "; ".join(problems)


def bbbc006_file_name(
    well: str, site: int, channel: int, uuid: str, plate: str = "mcf-z-stacks-03212011"
) -> str:
    """Return the real BBBC006 file name for a field of view (wells in lower case, as published)."""
    w = normalise_well(well).lower()
    return f"{plate}_{w}_s{site}_w{channel}{uuid}.tif"


def z_folder_name(z: int) -> str:
    """Return the real BBBC006 folder (and zip stem) name of a z-slice, e.g. ``BBBC006_v1_images_z_16``."""
    return f"BBBC006_v1_images_z_{z:02d}"
