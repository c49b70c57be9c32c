"""Draw one synthetic field of view: cells, stains, defocus and camera noise. Pure numpy, no I/O.

See :mod:`indexer.bbbc006.synthetic` for how an image is made; :func:`render_site` is the entry point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from indexer.bbbc006.constants import (
    CHANNELS,
    DEFAULT_PLATE,
    FOCUS_Z,
    HEIGHT,
    SATURATION,
    SITES,
    WIDTH,
    Z_SLICES,
)
from indexer.bbbc006.synthetic.phenotypes import Phenotype, SiteTruth, well_phenotype
from indexer.bbbc006.synthetic.spec import (
    _STREAM_NOISE,
    _STREAM_SITE,
    _check_ints,
    _check_plate,
    _check_seed,
    _parse_well,
    _range,
    _rng,
    _well_index,
)

# Camera model, fitted to the real w2 images: dark gaps sit at ~230-300 ADU, and the pixel variance
# grows with the level at about 0.6-0.7 ADU per ADU (shot noise) over a few ADU of read noise.
_OFFSET = 200.0
_GAIN = 0.65  # ADU per photo-electron
_READ_NOISE = 4.0  # ADU

# Optics: 20x NA 0.45 with 2x binning is 0.645 µm per pixel. Out of focus by dz, the light of a point
# fills a disk of radius dz * tan(asin(NA)) = 0.504 dz (geometric optics, objective in air): 1.0 µm =
# 1.56 px per 2 µm slice. Real defocus is not symmetric (the cells sit on the glass, the objective has
# some spherical aberration), so slices below focus spread a little slower than the same distance
# above, and z = 16 - k and 16 + k are different images.
_PSF_SIGMA = 0.6  # px, the in-focus spot
_UM_PER_PX = 0.645
_Z_STEP_UM = 2.0
_NA = 0.45
_DISK_PX_PER_SLICE = _Z_STEP_UM * float(np.tan(np.arcsin(_NA))) / _UM_PER_PX  # 1.56
_BELOW_FOCUS_FACTOR = 0.85  # below focus the disk grows at 0.85 of the rate above
_CONTRAST_LOSS_PER_SLICE = 0.03  # out-of-focus haze flattens the image beyond what blur alone does
_PAD = 68  # reflect padding before the FFT blur: beyond the widest disk (z33, 26.5 px) and its spot


@dataclass(frozen=True)
class RenderedSite:
    """The images of one field of view and its ground truth.

    ``images`` maps ``(channel, z)`` to a ``(520, 696)`` uint16 array.
    """

    truth: SiteTruth
    images: Mapping[tuple[int, int], np.ndarray]


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
        return self.filter(_gaussian_transfer(self.padded_shape, sigma))

    def filter(self, transfer: np.ndarray) -> np.ndarray:
        """Return the image filtered by ``transfer`` (an ``rfft2``-grid transfer function; same shape)."""
        out = np.fft.irfft2(self.spectrum * transfer, s=self.padded_shape)
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
    return np.clip(np.rint(adu), 0, SATURATION).astype(np.uint16)


def defocus_radius(z: int) -> float:
    """Radius in pixels of the geometric defocus disk of slice ``z`` (0 at focus).

    ``|z - 16| x 2 µm x tan(asin(0.45)) / 0.645 µm per px``: 1.56 px per slice above focus, 0.85 of
    that below (about 21.3 px at z0 and 26.5 px at z33).
    """
    per_slice = _DISK_PX_PER_SLICE * (1.0 if z >= FOCUS_Z else _BELOW_FOCUS_FACTOR)
    return float(per_slice * abs(z - FOCUS_Z))


def _disk_transfer(shape: tuple[int, int], radius: float, oversample: int = 4) -> np.ndarray:
    """The ``rfft2``-grid transfer function of a unit-sum uniform disk of ``radius`` pixels.

    The disk is drawn on the pixel grid with ``oversample``-fold sub-pixel coverage (so a small
    radius grows smoothly, not pixel by pixel) and transformed; numpy only (no Bessel function needed).
    """
    if radius <= 0:
        return np.ones((shape[0], shape[1] // 2 + 1))
    reach = int(np.ceil(radius)) + 1
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    offs = np.arange(-reach, reach + 1)
    yy = (offs[:, None, None, None] + sub[None, None, :, None]) ** 2
    xx = (offs[None, :, None, None] + sub[None, None, None, :]) ** 2
    kernel = ((yy + xx) <= radius**2).mean(axis=(2, 3))
    kernel /= kernel.sum()
    grid = np.zeros(shape)
    for i, dy in enumerate(offs):  # centred on pixel (0, 0), wrapped: a zero-phase filter
        grid[dy % shape[0], offs % shape[1]] += kernel[i]
    return np.fft.rfft2(grid)


def defocus_transfer(shape: tuple[int, int], z: int) -> np.ndarray:
    """Transfer function of slice ``z``: the in-focus spot times the defocus disk (``rfft2`` grid)."""
    return _gaussian_transfer(shape, _PSF_SIGMA) * _disk_transfer(shape, defocus_radius(z))


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
    (site,) = _check_ints("site", (site,), _range(SITES))
    channels = _check_ints("channel", channels, _range(CHANNELS))
    z_slices = _check_ints("z-slice", z_slices, Z_SLICES)
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
            blurred = blurrer.filter(defocus_transfer(blurrer.padded_shape, z))
            expected = mean + (blurred - mean) / (1.0 + _CONTRAST_LOSS_PER_SLICE * dz)
            rng = _rng(seed, _STREAM_NOISE, row, col, site, channel, z) if noise else None
            images[(channel, z)] = _camera(expected, rng)
    return RenderedSite(truth=truth, images=images)
