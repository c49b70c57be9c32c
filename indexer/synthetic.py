"""A synthetic BBBC006 look-alike: same folders, file names and TIFF layout, with known phenotypes.

The real set (:mod:`indexer.bbbc006`) is one 384-well plate of U2OS cells, 2 sites per well, Hoechst
(``w1``) and phalloidin (``w2``) channels, 34 z-slices 2 µm apart with z16 in focus, 696x520 16-bit
LZW TIFFs with 12-bit values. This module writes images that code reading BBBC006 cannot tell apart
by layout, plus a ground-truth CSV of what was drawn (phenotype class, cell count, nuclear size, ...),
so that retrieval by phenotype and robustness to defocus can be measured on data of known content.

How an image is made:

1. Each well draws a phenotype (one of :data:`PHENOTYPE_CLASSES`, plus per-well jitter) from
   ``(seed, well)``; both sites of a well share it.
2. Each site draws its geometry once from ``(seed, well, site)``: colonies (a thresholded smooth random
   field), nuclei placed inside them, each cell's territory (a weighted Voronoi tessellation cut by
   the colony), actin fibres, rounded bright mitotic cells. This gives a noise-free in-focus image
   per channel; both channels show the same cells.
3. Each z-slice blurs that image with a Gaussian whose sigma grows in proportion to ``|z - 16|``
   (defocus; a little faster above focus than below, see :func:`defocus_sigma`), loses some contrast,
   then gets Poisson (shot) and Gaussian (read) camera noise on a camera offset and is clipped to
   12 bits, saturating at 4095. The noise of each image comes from ``(seed, well, site, channel, z)``.

Every random draw is keyed by what it belongs to, never by what else was asked for: a well written
alone is byte-identical to the same well written in a full plate, and the same seed gives the same
bytes (on the same numpy build: FFT rounding may differ between builds).

Only numpy and tifffile are needed (blur by FFT), so the core install can run it.
"""

from __future__ import annotations

import csv
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from indexer.bbbc006 import bbbc006_file_name, normalise_well, parse_path, z_folder_name
from indexer.errors import ConfigError

HEIGHT, WIDTH = 520, 696
PLATE_ROWS = "ABCDEFGHIJKLMNOP"
N_COLUMNS = 24
N_Z = 34
FOCUS_Z = 16
MAX_ADU = 4095  # the camera is 12-bit: real BBBC006 values stop at 4095
DEFAULT_PLATE = "mcf-z-stacks-03212011"
GROUND_TRUTH_NAME = "BBBC006_synthetic_ground_truth.csv"

# Camera model, fitted to the real w2 images: dark gaps sit at ~230-300 ADU, and the pixel variance
# grows with the level at about 0.6-0.7 ADU per ADU (shot noise) over a few ADU of read noise.
_OFFSET = 200.0
_GAIN = 0.65  # ADU per photo-electron
_READ_NOISE = 4.0  # ADU

# Optics: 20x NA 0.45 with 2x binning is 0.645 µm per pixel; a 2 µm step of defocus widens the blur
# by roughly one pixel. Sigmas are in pixels. Real defocus is not symmetric (the cells sit on the glass,
# the objective has some spherical aberration), so slices above focus blur a little faster than the
# same distance below, and z = 16 - k and 16 + k are different images.
_PSF_SIGMA = 0.6
_DEFOCUS_SIGMA_BELOW = 0.85  # px per slice, z < 16
_DEFOCUS_SIGMA_ABOVE = 1.0  # px per slice, z > 16
_CONTRAST_LOSS_PER_SLICE = 0.03  # out-of-focus haze flattens the image beyond what blur alone does
_PAD = 68  # reflect padding before the FFT blur: 4 sigma of the blurriest slice (z33)

# Independent random streams, so that adding a draw to one never shifts another.
_STREAM_WELL, _STREAM_SITE, _STREAM_NOISE, _STREAM_UUID = 1, 2, 3, 4


@dataclass(frozen=True)
class Phenotype:
    """What a well looks like: the parameters its sites are drawn from.

    Attributes
    ----------
    phenotype_class : str
        One of :data:`PHENOTYPE_CLASSES`.
    cell_count : float
        Expected number of nuclei per field of view.
    nuclear_radius_px : float
        Mean equivalent radius of interphase nuclei, in pixels.
    intensity_scale : float
        Stain brightness relative to the control class (both channels).
    confluence : float
        Fraction of the field the colonies cover (each site varies around it; from 0.99 up there are
        no gaps); the rest are empty gaps between colonies.
    mitotic_fraction : float
        Fraction of cells that are rounded, bright and mitotic.
    """

    phenotype_class: str
    cell_count: float
    nuclear_radius_px: float
    intensity_scale: float
    confluence: float
    mitotic_fraction: float


# A few discrete classes with clear differences, so that "find wells like this one" has a right answer;
# each well jitters around its class (see _WELL_JITTER).
_CLASSES: tuple[Phenotype, ...] = (
    Phenotype("control", cell_count=150, nuclear_radius_px=10.5, intensity_scale=1.0, confluence=0.92,
              mitotic_fraction=0.04),
    Phenotype("sparse", cell_count=70, nuclear_radius_px=12.5, intensity_scale=1.25, confluence=0.70,
              mitotic_fraction=0.02),
    Phenotype("dense", cell_count=270, nuclear_radius_px=8.0, intensity_scale=0.95, confluence=1.0,
              mitotic_fraction=0.03),
    Phenotype("mitotic", cell_count=120, nuclear_radius_px=10.0, intensity_scale=1.05, confluence=0.80,
              mitotic_fraction=0.11),
)  # fmt: skip
PHENOTYPE_CLASSES: tuple[str, ...] = tuple(p.phenotype_class for p in _CLASSES)
# Log-normal sigmas of the per-well jitter: small enough that the classes stay apart.
_WELL_JITTER = {
    "cell_count": 0.12,
    "nuclear_radius_px": 0.05,
    "intensity_scale": 0.08,
    "mitotic_fraction": 0.2,
}


@dataclass(frozen=True)
class SiteTruth:
    """Ground truth of one field of view (one row of the ground-truth CSV).

    ``phenotype_class``, ``intensity_scale`` and ``mitotic_fraction`` are the well's; ``cell_count``
    (nuclei whose centre is in the image), ``n_mitotic``, ``nuclear_radius_px`` (mean equivalent
    radius ``sqrt(a*b)`` of the interphase nuclei drawn) and ``confluence`` (fraction of pixels covered
    by cells) are measured on the site as drawn.
    """

    well: str
    row: str
    column: int
    site: int
    phenotype_class: str
    cell_count: int
    n_mitotic: int
    nuclear_radius_px: float
    confluence: float
    intensity_scale: float
    mitotic_fraction: float
    seed: int
    plate: str

    def to_row(self) -> dict[str, str]:
        """Return the CSV row: fixed decimals, so the file is byte-stable."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = f"{v:.4f}" if isinstance(v, float) else str(v)
        return out


GROUND_TRUTH_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(SiteTruth))


@dataclass(frozen=True)
class RenderedSite:
    """The images of one field of view and its ground truth.

    ``images`` maps ``(channel, z)`` to a ``(520, 696)`` uint16 array.
    """

    truth: SiteTruth
    images: Mapping[tuple[int, int], np.ndarray]


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
    """

    out_dir: Path
    wells: tuple[str, ...]
    sites: tuple[int, ...] = (1, 2)
    channels: tuple[int, ...] = (1, 2)
    z_slices: tuple[int, ...] = (FOCUS_Z,)
    seed: int = 0
    plate: str = DEFAULT_PLATE

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        wells = well_range(self.wells) if isinstance(self.wells, str) else _check_wells(self.wells)
        object.__setattr__(self, "wells", wells)
        object.__setattr__(self, "sites", _check_ints("site", self.sites, range(1, 3)))
        object.__setattr__(self, "channels", _check_ints("channel", self.channels, range(1, 3)))
        object.__setattr__(self, "z_slices", _check_ints("z-slice", self.z_slices, range(N_Z)))
        _check_seed(self.seed)
        _check_plate(self.plate)

    @property
    def n_images(self) -> int:
        """Number of TIFFs this configuration writes."""
        return len(self.wells) * len(self.sites) * len(self.channels) * len(self.z_slices)


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate` wrote."""

    n_images: int
    seconds: float
    ground_truth: Path
    out_dir: Path = field(default=Path("."))

    @property
    def images_per_minute(self) -> float:
        """Write rate (images per minute of wall time)."""
        return 60.0 * self.n_images / self.seconds if self.seconds > 0 else float("inf")


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
# Random streams, phenotypes, names


def _rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    """A generator keyed by what it draws for: the same key gives the same numbers in any run."""
    return np.random.default_rng([int(seed), stream, *(int(k) for k in key)])


def well_phenotype(well: str, seed: int = 0) -> Phenotype:
    """Return the phenotype of ``well`` under ``seed``: a class drawn at random, plus per-well jitter.

    Raises
    ------
    ConfigError
        If the well is not on a 384-well plate or the seed is negative.
    """
    _check_seed(seed)
    row, col = _well_index(_parse_well(well))
    rng = _rng(seed, _STREAM_WELL, row, col)
    base = _CLASSES[int(rng.integers(len(_CLASSES)))]
    jitter = {k: float(np.exp(rng.normal(0.0, s))) for k, s in _WELL_JITTER.items()}
    return Phenotype(
        phenotype_class=base.phenotype_class,
        cell_count=base.cell_count * jitter["cell_count"],
        nuclear_radius_px=base.nuclear_radius_px * jitter["nuclear_radius_px"],
        intensity_scale=base.intensity_scale * jitter["intensity_scale"],
        confluence=float(np.clip(base.confluence + rng.normal(0.0, 0.03), 0.3, 1.0)),
        mitotic_fraction=float(min(base.mitotic_fraction * jitter["mitotic_fraction"], 0.5)),
    )


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


# --------------------------------------------------------------------------------------------------
# Image primitives (pure numpy)


def _fast_len(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3, 5 and 7 (fast FFT sizes)."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _gaussian_transfer(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """The Fourier transform of a unit-sum Gaussian of ``sigma`` pixels, on an ``rfft2`` grid."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return np.exp(-2.0 * np.pi**2 * sigma**2 * (fy**2 + fx**2))


def _upsample(small: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling by an integer ``factor`` (pixel centres aligned, edges clamped)."""
    out = small
    for axis in (0, 1):
        n = out.shape[axis]
        pos = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0.0, n - 1.0)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        t = pos - i0
        a, b = np.take(out, i0, axis=axis), np.take(out, i1, axis=axis)
        t = t[:, None] if axis == 0 else t[None, :]
        out = a * (1.0 - t) + b * t
    return out


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, factor: int = 1
) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma`` px, scaled to zero mean and unit std.

    Periodic at the borders, which is harmless for a random texture. ``factor`` > 1 draws it on a grid
    that much coarser and upsamples: the same look for wide sigmas at a fraction of the FFT cost.
    """
    small = (shape[0] // factor, shape[1] // factor)
    spectrum = np.fft.rfft2(rng.standard_normal(small)) * _gaussian_transfer(small, sigma / factor)
    out = np.fft.irfft2(spectrum, s=small)
    if factor > 1:
        out = _upsample(out, factor)
    out -= out.mean()
    return out / (out.std() + 1e-12)


class _Blurrer:
    """Gaussian blurs of one image at several sigmas, sharing one forward FFT.

    The image is reflect-padded first (as ``scipy.ndimage.gaussian_filter`` does) so that a wide
    defocus blur does not wrap the bottom edge onto the top.
    """

    def __init__(self, image: np.ndarray) -> None:
        self.shape = image.shape
        h, w = image.shape
        self.padded_shape = (_fast_len(h + 2 * _PAD), _fast_len(w + 2 * _PAD))
        ph, pw = self.padded_shape
        padded = np.pad(image, ((_PAD, ph - h - _PAD), (_PAD, pw - w - _PAD)), mode="reflect")
        self.spectrum = np.fft.rfft2(padded)

    def blur(self, sigma: float) -> np.ndarray:
        """Return the image blurred by a Gaussian of ``sigma`` pixels (same shape)."""
        out = np.fft.irfft2(self.spectrum * _gaussian_transfer(self.padded_shape, sigma), s=self.padded_shape)
        h, w = self.shape
        return out[_PAD : _PAD + h, _PAD : _PAD + w]


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels with reflected borders."""
    return _Blurrer(image).blur(sigma)


def _blur_wide(image: np.ndarray, sigma: float, factor: int = 4) -> np.ndarray:
    """Gaussian blur for wide sigmas (haze): on ``factor``-binned pixels, then upsampled."""
    h, w = image.shape
    binned = image.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    return _upsample(_blur(binned, sigma / factor), factor)


def _box(cy: float, cx: float, reach: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Slices of the image box within ``reach`` px of a point, and the offsets (dy, dx) of its pixels."""
    y0, y1 = max(0, int(cy - reach)), min(HEIGHT, int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(WIDTH, int(cx + reach) + 2)
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - cx
    return slice(y0, y1), slice(x0, x1), dy, dx


def _rotate(dy: np.ndarray, dx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in a frame whose first axis points along ``angle`` (radians from the x axis)."""
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _splat(image: np.ndarray, y: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    """Add weights ``w`` at sub-pixel points ``(y, x)`` with bilinear spreading (points off-image drop)."""
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    flat = image.reshape(-1)
    for oy, ox, wt in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + oy, x0 + ox
        ok = (yy >= 0) & (yy < HEIGHT) & (xx >= 0) & (xx < WIDTH)
        flat += np.bincount(yy[ok] * WIDTH + xx[ok], weights=(w * wt)[ok], minlength=flat.size)


# --------------------------------------------------------------------------------------------------
# Geometry of one site


@dataclass(frozen=True)
class _Cells:
    """Per-cell parameters of one site (arrays of length n)."""

    y: np.ndarray
    x: np.ndarray
    a: np.ndarray  # nucleus semi-axis along `angle`, px
    b: np.ndarray  # nucleus semi-axis across, px
    angle: np.ndarray  # orientation of nucleus and cell body, radians
    elongation: np.ndarray  # cell body aspect (>= 1)
    reach: np.ndarray  # cell body radius scale, px
    mitotic: np.ndarray  # bool
    dna: np.ndarray  # Hoechst brightness factor
    actin: np.ndarray  # phalloidin brightness factor


def _place_nuclei(rng: np.random.Generator, colony: np.ndarray, n: int, min_dist: float) -> np.ndarray:
    """Up to ``n`` random points in ``colony``, no two closer than ``min_dist`` (dart throwing).

    Returns an ``(m, 2)`` array of (y, x), ``m <= n``: a colony too small for ``n`` nuclei gets fewer.
    """
    ys, xs = np.nonzero(colony)
    if n <= 0 or ys.size == 0:
        return np.zeros((0, 2))
    tries = 20 * n + 100
    pick = rng.integers(0, ys.size, size=tries)
    cand_y = ys[pick] + rng.random(tries)
    cand_x = xs[pick] + rng.random(tries)
    # A grid of cells of side min_dist/sqrt(2) holds at most one accepted point each, so a candidate
    # only needs checking against the 5x5 neighbouring cells.
    cell = min_dist / np.sqrt(2.0)
    d2 = min_dist * min_dist
    grid: dict[tuple[int, int], tuple[float, float]] = {}
    accepted: list[tuple[float, float]] = []
    for y, x in zip(cand_y.tolist(), cand_x.tolist()):
        gy, gx = int(y // cell), int(x // cell)
        ok = True
        for oy in range(-2, 3):
            for ox in range(-2, 3):
                p = grid.get((gy + oy, gx + ox))
                if p is not None and (p[0] - y) ** 2 + (p[1] - x) ** 2 < d2:
                    ok = False
                    break
            if not ok:
                break
        if ok:
            grid[(gy, gx)] = (y, x)
            accepted.append((y, x))
            if len(accepted) == n:
                break
    return np.asarray(accepted, dtype=np.float64).reshape(-1, 2)


def _draw_cells(rng: np.random.Generator, ph: Phenotype, colony: np.ndarray) -> _Cells:
    """Place the nuclei of one site and draw each cell's size, shape and brightness."""
    r = ph.nuclear_radius_px
    pts = _place_nuclei(rng, colony, int(rng.poisson(ph.cell_count)), min_dist=2.2 * r)
    n = len(pts)
    # Cell territory radius so that n cells tile the colony area.
    body = np.sqrt(max(colony.sum(), 1) / (np.pi * max(n, 1)))
    size = r * np.exp(rng.normal(0.0, 0.12, n))
    aspect = rng.uniform(1.0, 1.6, n)
    mitotic = rng.random(n) < ph.mitotic_fraction
    # Mitotic cells round up and condense their chromatin: small, round, bright.
    a = np.where(mitotic, 0.75 * r, size * np.sqrt(aspect))
    b = np.where(mitotic, 0.75 * r, size / np.sqrt(aspect))
    return _Cells(
        y=pts[:, 0],
        x=pts[:, 1],
        a=a,
        b=b,
        angle=rng.uniform(0.0, np.pi, n),
        elongation=np.where(mitotic, 1.0, rng.uniform(1.0, 1.8, n)),
        reach=np.where(mitotic, 1.2 * r, body * np.exp(rng.normal(0.0, 0.2, n))),
        mitotic=mitotic,
        dna=np.exp(rng.normal(0.0, 0.15, n)) * np.where(mitotic, 2.2, 1.0),
        actin=np.exp(rng.normal(0.0, 0.25, n)),
    )


_MAX_REACH = 2.2  # how far a cell spreads where no neighbour stops it, in units of its radius scale


def _territories(cells: _Cells, colony: np.ndarray, warp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign colony pixels to cells (weighted, anisotropic Voronoi); return labels and boundary gap.

    ``labels`` is -1 off the cells. ``gap`` is the difference between the nearest and second-nearest
    cell's scaled distance: near 0 on a border between two cells, where cortical actin is bright.
    """
    best1 = np.full((HEIGHT, WIDTH), np.inf)
    best2 = np.full((HEIGHT, WIDTH), np.inf)
    labels = np.full((HEIGHT, WIDTH), -1, dtype=np.int32)
    for i in range(len(cells.y)):
        e, reach = cells.elongation[i], cells.reach[i]
        sy, sx, dy, dx = _box(cells.y[i], cells.x[i], _MAX_REACH * reach * e + 1.0)
        u, v = _rotate(dy, dx, cells.angle[i])
        d = np.sqrt((u / e) ** 2 + (v * e) ** 2) / reach + warp[sy, sx]
        b1, b2, lab = best1[sy, sx], best2[sy, sx], labels[sy, sx]
        closer = d < b1
        b2[...] = np.where(closer, b1, np.minimum(b2, d))
        b1[...] = np.where(closer, d, b1)
        lab[closer] = i
    # Cells stop at the colony edge, and a lone cell at _MAX_REACH times its radius scale.
    off = ~colony | (best1 > _MAX_REACH)
    labels[off] = -1
    gap = np.full((HEIGHT, WIDTH), np.inf)
    both = ~off & np.isfinite(best2)
    gap[both] = best2[both] - best1[both]
    return labels, gap


def _nuclei_images(cells: _Cells, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (DNA image, nucleus occupancy in [0, 1]) of the nuclei, with chromatin texture."""
    dna = np.zeros((HEIGHT, WIDTH))
    occupancy = np.zeros((HEIGHT, WIDTH))
    texture = _smooth_noise(rng, (HEIGHT, WIDTH), 1.2)
    for i in range(len(cells.y)):
        a, b = cells.a[i], cells.b[i]
        sy, sx, dy, dx = _box(cells.y[i], cells.x[i], a + 3.0)
        u, v = _rotate(dy, dx, cells.angle[i])
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        # Soft edge about one pixel wide, slightly domed interior, mottled chromatin.
        edge = 1.0 / (1.0 + np.exp(np.clip((rho - 1.0) * b / 0.7, -50, 50)))
        dome = 0.85 + 0.15 * np.clip(1.0 - rho**2, 0.0, 1.0)
        grain = 0.45 if cells.mitotic[i] else 0.25
        value = cells.dna[i] * edge * dome * (1.0 + grain * texture[sy, sx])
        if not cells.mitotic[i]:
            # One to three darker nucleoli.
            for _ in range(int(rng.integers(1, 4))):
                t, s = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.55)
                nu, nv = s * a * np.cos(t), s * b * np.sin(t)
                value *= 1.0 - 0.35 * np.exp(-((u - nu) ** 2 + (v - nv) ** 2) / (2.0 * 1.8**2))
        np.maximum(dna[sy, sx], value, out=dna[sy, sx])
        np.maximum(occupancy[sy, sx], edge, out=occupancy[sy, sx])
    return dna, occupancy


def _fibres(cells: _Cells, rng: np.random.Generator) -> np.ndarray:
    """Stress fibres: thin straight lines through each interphase cell, roughly along its long axis.

    They may run past the cell's border into its neighbours, as bundles in a monolayer do; the caller
    keeps them off the gaps.
    """
    owner = np.repeat(np.flatnonzero(~cells.mitotic), rng.poisson(9, int((~cells.mitotic).sum())))
    m = owner.size
    out = np.zeros((HEIGHT, WIDTH))
    if m == 0:
        return out
    reach, angle = cells.reach[owner], cells.angle[owner]
    theta = angle + rng.normal(0.0, 0.35, m)
    along, across = rng.uniform(-0.5, 0.5, m) * reach, rng.uniform(-0.8, 0.8, m) * reach
    cy = cells.y[owner] + along * np.sin(angle) + across * np.cos(angle)
    cx = cells.x[owner] + along * np.cos(angle) - across * np.sin(angle)
    half = 0.5 * reach * rng.uniform(1.2, 3.0, m)
    amp = 0.5 * cells.actin[owner] * np.exp(rng.normal(0.0, 0.5, m))  # 0.5: points are 0.5 px apart
    period, phase = rng.uniform(3.0, 9.0, m), rng.uniform(0.0, 2 * np.pi, m)
    # All points of all fibres at once: fibre f has n[f] points at t = -half, -half + 0.5, ...
    n = np.ceil(4.0 * half).astype(np.int64)
    f = np.repeat(np.arange(m), n)
    t = 0.5 * (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) - half[f]
    ripple = 1.0 + 0.4 * np.sin(t / period[f] + phase[f])  # brightness varies along a fibre
    _splat(out, cy[f] + t * np.sin(theta[f]), cx[f] + t * np.cos(theta[f]), amp[f] * ripple)
    return out


def _mitotic_bodies(cells: _Cells, texture: np.ndarray) -> np.ndarray:
    """Rounded mitotic cells: bright, slightly oval, mottled blobs with a soft edge."""
    out = np.zeros((HEIGHT, WIDTH))
    for i in np.flatnonzero(cells.mitotic):
        radius = cells.reach[i]
        sy, sx, dy, dx = _box(cells.y[i], cells.x[i], 1.2 * radius + 4.0)
        u, v = _rotate(dy, dx, cells.angle[i])
        rr = np.sqrt((u / 1.15) ** 2 + (v * 1.15) ** 2) / radius
        disc = 1.0 / (1.0 + np.exp(np.clip((rr - 1.0) * radius / 1.5, -50, 50)))
        value = cells.actin[i] * disc * (1.1 - 0.3 * rr**2) * (1.0 + 0.15 * texture[sy, sx])
        np.maximum(out[sy, sx], value, out=out[sy, sx])
    return out


def _puncta(rng: np.random.Generator, territory: np.ndarray, n: int) -> np.ndarray:
    """A few small bright dots (actin patches, debris) on the cells."""
    out = np.zeros((HEIGHT, WIDTH))
    ys, xs = np.nonzero(territory)
    if ys.size and n > 0:
        pick = rng.integers(0, ys.size, size=n)
        _splat(out, ys[pick] + rng.random(n), xs[pick] + rng.random(n), rng.uniform(2.0, 10.0, n))
    return out


def _clean_site(ph: Phenotype, rng: np.random.Generator) -> tuple[dict[int, np.ndarray], _Cells, float]:
    """Draw one site and return its noise-free in-focus images (ADU above offset) per channel.

    Also returns the cells drawn and the confluence measured.
    """
    shape = (HEIGHT, WIDTH)
    colony_field = _smooth_noise(rng, shape, 45.0, factor=4)
    # Sites of one well differ in how much of the field the colonies cover; near 1 there are no gaps
    # at all, like most dense real fields.
    confluence = min(1.0, ph.confluence + rng.normal(0.0, 0.04))
    if confluence >= 0.99:
        colony = np.ones(shape, dtype=bool)
    else:
        colony = colony_field > np.quantile(colony_field, 1.0 - confluence)
    cells = _draw_cells(rng, ph, colony)
    warp = 0.12 * _smooth_noise(rng, shape, 6.0, factor=2)
    labels, gap = _territories(cells, colony, warp)
    territory = labels >= 0
    dna, nucleus = _nuclei_images(cells, rng)

    # Phalloidin: cytoplasm at each cell's own brightness, dimmer over the nucleus with a brighter
    # perinuclear ring, bright ragged cortex on cell borders and colony edges, stress fibres, speckle,
    # bright rounded mitotic cells on top.
    if len(cells.y):
        own = np.maximum(labels, 0)
        cell_actin = np.where(territory, cells.actin[own], 0.0)
        # gap * reach / 2 is roughly the distance in pixels to the border with the next cell.
        border_px = gap * cells.reach[own] / 2.0
    else:
        cell_actin = border_px = np.zeros(shape)
    texture = _smooth_noise(rng, shape, 1.5)
    ragged = np.clip(1.0 + 0.6 * _smooth_noise(rng, shape, 5.0, factor=2), 0.2, None)
    nucleus = nucleus * territory
    cyto = (
        1000.0 * cell_actin * (1.0 + 0.2 * texture) * (1.0 - 0.5 * nucleus + 0.8 * nucleus * (1.0 - nucleus))
    )
    cortex = 900.0 * cell_actin * ragged * np.exp(-0.5 * (border_px / 1.3) ** 2)
    rim = 600.0 * ragged * np.clip(1.0 - _blur(territory.astype(np.float64), 2.0), 0.0, 1.0) * territory
    fibres = 550.0 * _fibres(cells, rng) * territory
    dots = 1500.0 * _puncta(rng, territory, int(rng.poisson(0.5 * len(cells.y))))
    mito = 4800.0 * _mitotic_bodies(cells, texture)
    actin = np.maximum(cyto + cortex + rim + fibres + dots, mito) * ph.intensity_scale
    # Cells are several µm thick, so even the best plane holds out-of-focus light: mix in a slightly
    # blurred copy. Out-of-focus glow of the neighbours fills small holes in a cell sheet (real dense
    # fields have no dark pixels), stray light and autofluorescence lift wide gaps a little.
    actin = 0.6 * actin + 0.4 * _blur(actin, 2.5)
    actin += 60.0 + 0.25 * _blur_wide(actin, 6.0, factor=2) + 0.12 * _blur_wide(actin, 25.0)

    hoechst = 1500.0 * dna * ph.intensity_scale
    hoechst += 25.0 + 0.06 * _blur_wide(hoechst, 20.0)
    return {1: hoechst, 2: actin}, cells, float(territory.mean())


def _camera(expected: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Expected ADU above offset -> 12-bit camera image (Poisson shot + Gaussian read noise)."""
    signal = np.maximum(expected, 0.0)
    if rng is None:
        adu = _OFFSET + signal
    else:
        electrons = rng.poisson(signal / _GAIN)
        adu = _OFFSET + _GAIN * electrons + rng.normal(0.0, _READ_NOISE, signal.shape)
    return np.clip(np.rint(adu), 0, MAX_ADU).astype(np.uint16)


def defocus_sigma(z: int) -> float:
    """Gaussian blur in pixels of slice ``z``: the in-focus PSF widened in proportion to ``|z - 16|``.

    0.6 px at z16; 0.85 px more per slice below focus and 1.0 px per slice above (about 13.6 px at
    z0 and 17.0 px at z33).
    """
    per_slice = _DEFOCUS_SIGMA_ABOVE if z > FOCUS_Z else _DEFOCUS_SIGMA_BELOW
    return float(np.hypot(_PSF_SIGMA, per_slice * abs(z - FOCUS_Z)))


def render_site(well: str, site: int, *, seed: int = 0, channels: Sequence[int] = (1, 2),
                z_slices: Sequence[int] = (FOCUS_Z,), plate: str = DEFAULT_PLATE,
                noise: bool = True) -> RenderedSite:  # fmt: skip
    """Draw one field of view and return its images and ground truth (no I/O).

    Parameters
    ----------
    well : str
        A well of the 384-well plate (``A01`` ... ``P24``, any case).
    site : int
        1 or 2.
    seed : int
        Non-negative data set seed; with ``well`` and ``site`` it fixes everything drawn.
    channels : sequence of int
        1 (Hoechst) and/or 2 (phalloidin).
    z_slices : sequence of int
        Slices in ``0 .. 33``; 16 is in focus.
    plate : str
        Plate name recorded in the ground truth.
    noise : bool
        False gives the expected camera values without shot or read noise (still blurred, offset,
        rounded and clipped), e.g. to measure what the noise does.

    Returns
    -------
    RenderedSite
        ``images[(channel, z)]`` is a ``(520, 696)`` uint16 array with values in ``0 .. 4095``.

    Raises
    ------
    ConfigError
        If any argument is out of range.
    """
    well = _parse_well(well)
    (site,) = _check_ints("site", (site,), range(1, 3))
    channels = _check_ints("channel", channels, range(1, 3))
    z_slices = _check_ints("z-slice", z_slices, range(N_Z))
    _check_seed(seed)
    _check_plate(plate)
    row, col = _well_index(well)

    ph = well_phenotype(well, seed)
    clean, cells, confluence = _clean_site(ph, _rng(seed, _STREAM_SITE, row, col, site))
    interphase = ~cells.mitotic
    radius = float(np.sqrt(cells.a[interphase] * cells.b[interphase]).mean()) if interphase.any() else 0.0
    truth = SiteTruth(
        well=well,
        row=well[0],
        column=col,
        site=site,
        phenotype_class=ph.phenotype_class,
        cell_count=len(cells.y),
        n_mitotic=int(cells.mitotic.sum()),
        nuclear_radius_px=radius,
        confluence=confluence,
        intensity_scale=ph.intensity_scale,
        mitotic_fraction=ph.mitotic_fraction,
        seed=int(seed),
        plate=plate,
    )

    images: dict[tuple[int, int], np.ndarray] = {}
    for channel in channels:
        blurrer = _Blurrer(clean[channel])
        mean = float(clean[channel].mean())
        for z in z_slices:
            dz = abs(z - FOCUS_Z)
            expected = mean + (blurrer.blur(defocus_sigma(z)) - mean) / (1.0 + _CONTRAST_LOSS_PER_SLICE * dz)
            rng = _rng(seed, _STREAM_NOISE, row, col, site, channel, z) if noise else None
            images[(channel, z)] = _camera(expected, rng)
    return RenderedSite(truth=truth, images=images)


# --------------------------------------------------------------------------------------------------
# Writing


def _write_tiff(path: Path, image: np.ndarray) -> None:
    """Write ``image`` with the real BBBC006 TIFF layout, atomically (temp name, then os.replace).

    Little-endian, LZW without predictor, 11 rows per strip, 72 dpi, orientation tag, and no
    ImageDescription or Software tag (tifffile writes both unless told not to).
    """
    import tifffile

    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tifffile.imwrite(
            tmp,
            image,
            byteorder="<",
            photometric="minisblack",
            compression="lzw",
            predictor=False,
            rowsperstrip=11,
            description=None,
            metadata=None,
            software=False,
            resolution=(72.0, 72.0),
            resolutionunit="INCH",
            extratags=[(274, "H", 1, 1, True)],  # Orientation = top-left, as in the real files
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_no_conflicts(config: SyntheticConfig) -> None:
    """Refuse to add images beside ones of the same plate/well/site/channel/z under another name.

    Another seed gives other UUIDs, so writing into a folder made with a different seed would leave
    two images of one field of view side by side.
    """
    wanted = {(w, s, c) for w in config.wells for s in config.sites for c in config.channels}
    for z in config.z_slices:
        folder = config.out_dir / z_folder_name(z)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = parse_path(str(p))
            if not m.parsed or m.plate != config.plate:
                continue
            key = (m.well, m.site, int(m.channel[1:]))
            if (
                key in wanted
                and p.name != image_path(config.out_dir, *key, z, config.seed, config.plate).name
            ):
                raise ConfigError(
                    f"{p} already holds well {m.well} site {m.site} {m.channel} z{z} from another seed; "
                    "write to an empty folder, or delete the old images first"
                )


def _write_ground_truth(path: Path, truths: Sequence[SiteTruth]) -> None:
    """Write the ground-truth CSV, keeping rows of other (plate, well, site) already in the file.

    So several runs into one folder (e.g. more wells later) leave one CSV describing all of them.
    """
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    if path.is_file():
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                if set(GROUND_TRUTH_COLUMNS) <= set(r):
                    rows[(r["plate"], r["well"], r["site"])] = {k: r[k] for k in GROUND_TRUTH_COLUMNS}
    for t in truths:
        rows[(t.plate, t.well, str(t.site))] = t.to_row()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=GROUND_TRUTH_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for key in sorted(rows):
                writer.writerow(rows[key])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_site(config: SyntheticConfig, well: str, site: int) -> tuple[SiteTruth, int]:
    """Render one field of view and write its images; return its truth and the number written.

    Everything drawn depends on ``(seed, well, site[, channel, z])`` only, so sites can be written in
    any order, by any number of processes, with the same bytes.
    """
    rendered = render_site(well, site, seed=config.seed, channels=config.channels,
                           z_slices=config.z_slices, plate=config.plate)  # fmt: skip
    for (channel, z), image in rendered.images.items():
        _write_tiff(image_path(config.out_dir, well, site, channel, z, config.seed, config.plate), image)
    return rendered.truth, len(rendered.images)


def _write_site_job(job: tuple[SyntheticConfig, str, int]) -> tuple[SiteTruth, int]:
    return _write_site(*job)


def generate(config: SyntheticConfig, progress: bool = False, workers: int = 1) -> GenerationSummary:
    """Write the images of ``config`` and the ground-truth CSV; return what was written.

    Images go to ``out_dir/BBBC006_v1_images_z_XX/<plate>_<well>_s<site>_w<channel><uuid>.tif``
    (see :func:`image_path`), each written to a temporary name and renamed, so an interrupted run
    never leaves a truncated TIFF. Rerunning with the same seed rewrites identical files.
    ``out_dir/BBBC006_synthetic_ground_truth.csv`` gets one row per (well, site), merged with rows
    already there.

    Parameters
    ----------
    config : SyntheticConfig
        What to write.
    progress : bool
        Show a tqdm progress bar on stderr.
    workers : int
        Processes rendering sites in parallel. The files do not depend on it: each image's random
        draws come from ``(seed, well, site, channel, z)``, never from the order sites are done in.

    Returns
    -------
    GenerationSummary

    Raises
    ------
    ConfigError
        If the folder already holds images of the same fields of view made with another seed.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    _check_no_conflicts(config)
    for z in config.z_slices:
        (config.out_dir / z_folder_name(z)).mkdir(parents=True, exist_ok=True)
    truths: list[SiteTruth] = []
    with tqdm(
        total=config.n_images, unit="img", desc="synth", disable=not progress, dynamic_ncols=True
    ) as bar:
        jobs = [(config, well, site) for well in config.wells for site in config.sites]
        if workers > 1 and len(jobs) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                # map() returns in submission order, so the ground truth is ordered as with one worker.
                for truth, written in pool.map(_write_site_job, jobs):
                    truths.append(truth)
                    bar.update(written)
        else:
            for job in jobs:
                truth, written = _write_site_job(job)
                truths.append(truth)
                bar.update(written)
    ground_truth = config.out_dir / GROUND_TRUTH_NAME
    _write_ground_truth(ground_truth, truths)
    return GenerationSummary(
        n_images=config.n_images,
        seconds=time.perf_counter() - start,
        ground_truth=ground_truth,
        out_dir=config.out_dir,
    )
