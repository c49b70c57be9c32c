"""What a synthetic data set holds: its config, well specs, keyed random streams and file names.

Pure apart from :class:`pathlib.Path` arithmetic: nothing here reads or writes files.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.bbbc006.constants import CHANNELS, DEFAULT_PLATE, FOCUS_Z, N_COLUMNS, PLATE_ROWS, SITES, Z_SLICES
from indexer.bbbc006.names import bbbc006_file_name, z_folder_name
from indexer.core.errors import ConfigError
from indexer.core.records import normalise_well

# Independent random streams, so that adding a draw to one never shifts another.
# Phenotype families (defined in .phenotypes, which imports this module): named here for validation.
_FAMILY_NAMES = ("classic", "nuclear", "actin", "clustering")

_STREAM_WELL, _STREAM_SITE, _STREAM_NOISE, _STREAM_UUID, _STREAM_REFERENCE = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class SyntheticConfig:
    """One synthetic data set to write.

    Parameters
    ----------
    out_dir : Path
        Root folder; images go to ``out_dir/BBBC006_v1_images_z_XX/``.
    wells : tuple of str
        Wells of the 384-well plate (``A01`` ... ``P24``, any case, ``A1`` allowed), or one spec
        string for :func:`well_range` (``"A01:B04"``). Normalised to upper case, duplicates dropped.
    sites, channels : tuple of int
        Subsets of ``(1, 2)``; channel 1 is Hoechst (nuclei), 2 phalloidin (actin).
    z_slices : tuple of int
        Subset of ``0 .. 33``; 16 is in focus.
    seed : int
        Non-negative; the same seed gives the same bytes.
    plate : str
        Plate name at the start of each file name.
    family : str
        Phenotype family the wells draw their classes from (``classic``, the default, or one of the
        morphology-only families ``nuclear``, ``actin``, ``clustering``; see
        :data:`~indexer.bbbc006.synthetic.phenotypes.PHENOTYPE_FAMILIES`).
    """

    out_dir: Path
    wells: tuple[str, ...]
    sites: tuple[int, ...] = (1, 2)
    channels: tuple[int, ...] = (1, 2)
    z_slices: tuple[int, ...] = (FOCUS_Z,)
    seed: int = 0
    plate: str = DEFAULT_PLATE
    family: str = "classic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        wells = well_range(self.wells) if isinstance(self.wells, str) else _check_wells(self.wells)
        object.__setattr__(self, "wells", wells)
        object.__setattr__(self, "sites", _check_ints("site", self.sites, _range(SITES)))
        object.__setattr__(self, "channels", _check_ints("channel", self.channels, _range(CHANNELS)))
        object.__setattr__(self, "z_slices", _check_ints("z-slice", self.z_slices, Z_SLICES))
        _check_seed(self.seed)
        _check_plate(self.plate)
        if self.family not in _FAMILY_NAMES:
            raise ConfigError(
                f"unknown phenotype family {self.family!r}: use one of {', '.join(_FAMILY_NAMES)}"
            )

    @property
    def n_images(self) -> int:
        """Number of TIFFs this configuration writes."""
        return len(self.wells) * len(self.sites) * len(self.channels) * len(self.z_slices)


def _range(values: tuple[int, ...]) -> range:
    """The contiguous range of allowed values (sites and channels are 1..2)."""
    return range(min(values), max(values) + 1)


# --------------------------------------------------------------------------------------------------
# Validation and well specs


def _check_ints(what: str, values: Iterable[int], allowed: range) -> tuple[int, ...]:
    """Return ``values`` as a tuple of unique ints in ``allowed`` (order kept); raise ConfigError."""
    if isinstance(values, int | str):
        values = (values,)
    out: list[int] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ConfigError(f"{what} must be an integer, got {v!r}")
        if int(v) not in allowed:
            raise ConfigError(f"{what} {v} is out of range: use {allowed.start}..{allowed.stop - 1}")
        if int(v) not in out:
            out.append(int(v))
    if not out:
        raise ConfigError(f"give at least one {what}")
    return tuple(out)


def _check_seed(seed: int) -> None:
    """Raise ConfigError unless ``seed`` is a non-negative integer (numpy seeds must be)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def _check_plate(plate: str) -> None:
    """Raise ConfigError unless ``plate`` is usable at the start of a file name."""
    if not isinstance(plate, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", plate):
        raise ConfigError(f"plate name must be letters, digits, '.' or '-', got {plate!r}")


def _well_index(well: str) -> tuple[int, int]:
    """Return ``(row index 0-15, column 1-24)`` of a normalised well; raise ConfigError off the plate."""
    row, col = PLATE_ROWS.find(well[0]), int(well[1:])
    if row < 0 or not 1 <= col <= N_COLUMNS:
        raise ConfigError(f"well {well} is not on a 384-well plate (A01 .. P24)")
    return row, col


def _parse_well(token: str) -> str:
    """Normalise one well name and check it is on the plate."""
    try:
        well = normalise_well(token)
    except ValueError as e:
        raise ConfigError(f"not a well name: {token!r} (expected e.g. A01)") from e
    _well_index(well)
    return well


def _check_wells(wells: Iterable[str]) -> tuple[str, ...]:
    """Normalise a list of wells, dropping duplicates (order kept); raise ConfigError if empty or bad."""
    if isinstance(wells, str | bytes) or not isinstance(wells, Iterable):
        raise ConfigError(f"wells must be a list of well names, got {wells!r}")
    out = list(dict.fromkeys(_parse_well(str(w)) for w in wells))
    if not out:
        raise ConfigError("give at least one well")
    return tuple(out)


def well_range(spec: str) -> tuple[str, ...]:
    """Parse a well spec into upper-case well names.

    Parameters
    ----------
    spec : str
        Comma-separated items, each a well (``A01``, ``a1``) or a rectangle ``A01:B03`` (every well
        with a row between the two corners' rows and a column between their columns, row by row;
        corners in any order). ``A01:P24`` is the whole plate.

    Returns
    -------
    tuple of str
        Wells in the order given, duplicates dropped, e.g. ``well_range("A01:B02,C05")`` is
        ``("A01", "A02", "B01", "B02", "C05")``.

    Raises
    ------
    ConfigError
        If an item is not a well of the 384-well plate, or the spec is empty.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"well spec must be a string such as 'A01:B04', got {spec!r}")
    wells: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        corners = item.split(":")
        if len(corners) == 1:
            wells.append(_parse_well(item))
        elif len(corners) == 2:
            (r0, c0), (r1, c1) = (_well_index(_parse_well(c)) for c in corners)
            for r in range(min(r0, r1), max(r0, r1) + 1):
                wells.extend(f"{PLATE_ROWS[r]}{c:02d}" for c in range(min(c0, c1), max(c0, c1) + 1))
        else:
            raise ConfigError(f"not a well or a rectangle: {item!r} (expected A01 or A01:B04)")
    if not wells:
        raise ConfigError(f"no wells in {spec!r}: give e.g. A01,A02 or A01:B04")
    return tuple(dict.fromkeys(wells))


# --------------------------------------------------------------------------------------------------
# Random streams and names


def _rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    """A generator keyed by what it draws for: the same key gives the same numbers in any run."""
    return np.random.default_rng([int(seed), stream, *(int(k) for k in key)])


def file_uuid(well: str, site: int, channel: int, z: int, seed: int = 0) -> str:
    """Return the lower-case 8-4-4-4-12 UUID of one image: random-looking, fixed by its key.

    As in the real set, the same site has a different UUID at every z-slice and channel.
    """
    row, col = _well_index(_parse_well(well))
    rng = _rng(seed, _STREAM_UUID, row, col, site, channel, z)
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def image_path(out_dir: Path, well: str, site: int, channel: int, z: int, seed: int = 0,
               plate: str = DEFAULT_PLATE) -> Path:  # fmt: skip
    """Return where :func:`generate` writes one image: ``out_dir/BBBC006_v1_images_z_XX/<real name>``."""
    name = bbbc006_file_name(well, site, channel, file_uuid(well, site, channel, z, seed), plate=plate)
    return Path(out_dir) / z_folder_name(z) / name
