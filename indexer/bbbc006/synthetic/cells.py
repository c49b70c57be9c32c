"""The cells of one synthetic site: where the nuclei sit, each cell's shape and brightness, the cells'
territories, nuclei, stress fibres, mitotic bodies and puncta. Pure numpy, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.bbbc006.constants import HEIGHT, WIDTH
from indexer.bbbc006.synthetic.optics import smooth_noise
from indexer.bbbc006.synthetic.phenotypes import Phenotype


def box(cy: float, cx: float, reach: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Slices of the image box within ``reach`` px of a point, and the offsets (dy, dx) of its pixels."""
    y0, y1 = max(0, int(cy - reach)), min(HEIGHT, int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(WIDTH, int(cx + reach) + 2)
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - cx
    return slice(y0, y1), slice(x0, x1), dy, dx


def rotate(dy: np.ndarray, dx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in a frame whose first axis points along ``angle`` (radians from the x axis)."""
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def splat(image: np.ndarray, y: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
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


@dataclass(frozen=True)
class Cells:
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


def place_nuclei(rng: np.random.Generator, colony: np.ndarray, n: int, min_dist: float) -> np.ndarray:
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


def draw_cells(rng: np.random.Generator, ph: Phenotype, colony: np.ndarray) -> Cells:
    """Place the nuclei of one site and draw each cell's size, shape and brightness."""
    r = ph.nuclear_radius_px
    # Long nuclei need more room than round ones of the same area, or they would overlap.
    long_axis = r * np.sqrt(ph.nuclear_aspect) if ph.nuclear_aspect else r
    pts = place_nuclei(rng, colony, int(rng.poisson(ph.cell_count)), min_dist=2.2 * long_axis)
    n = len(pts)
    # Cell territory radius so that n cells tile the colony area.
    body = np.sqrt(max(colony.sum(), 1) / (np.pi * max(n, 1)))
    size = r * np.exp(rng.normal(0.0, 0.12, n))
    aspect = rng.uniform(1.0, 1.6, n)
    if ph.nuclear_aspect:
        aspect = np.full(n, float(ph.nuclear_aspect))
    mitotic = rng.random(n) < ph.mitotic_fraction
    angle = rng.uniform(0.0, np.pi, n)
    if ph.aligned_fibres:
        # One direction for the whole field (cells aligned by flow or a pattern), a little scatter.
        angle = rng.uniform(0.0, np.pi) + rng.normal(0.0, 0.15, n)
    # Mitotic cells round up and condense their chromatin: small, round, bright.
    a = np.where(mitotic, 0.75 * r, size * np.sqrt(aspect))
    b = np.where(mitotic, 0.75 * r, size / np.sqrt(aspect))
    return Cells(
        y=pts[:, 0],
        x=pts[:, 1],
        a=a,
        b=b,
        angle=angle,
        elongation=np.where(mitotic, 1.0, rng.uniform(1.0, 1.8, n)),
        reach=np.where(mitotic, 1.2 * r, body * np.exp(rng.normal(0.0, 0.2, n))),
        mitotic=mitotic,
        dna=np.exp(rng.normal(0.0, 0.15, n)) * np.where(mitotic, 2.2, 1.0),
        actin=np.exp(rng.normal(0.0, 0.25, n)),
    )


_MAX_REACH = 2.2  # how far a cell spreads where no neighbour stops it, in units of its radius scale


def territories(cells: Cells, colony: np.ndarray, warp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign colony pixels to cells (weighted, anisotropic Voronoi); return labels and boundary gap.

    ``labels`` is -1 off the cells. ``gap`` is the difference between the nearest and second-nearest
    cell's scaled distance: near 0 on a border between two cells, where cortical actin is bright.
    """
    best1 = np.full((HEIGHT, WIDTH), np.inf)
    best2 = np.full((HEIGHT, WIDTH), np.inf)
    labels = np.full((HEIGHT, WIDTH), -1, dtype=np.int32)
    for i in range(len(cells.y)):
        e, reach = cells.elongation[i], cells.reach[i]
        sy, sx, dy, dx = box(cells.y[i], cells.x[i], _MAX_REACH * reach * e + 1.0)
        u, v = rotate(dy, dx, cells.angle[i])
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


def nuclei_images(cells: Cells, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (DNA image, nucleus occupancy in [0, 1]) of the nuclei, with chromatin texture."""
    dna = np.zeros((HEIGHT, WIDTH))
    occupancy = np.zeros((HEIGHT, WIDTH))
    texture = smooth_noise(rng, (HEIGHT, WIDTH), 1.2)
    for i in range(len(cells.y)):
        a, b = cells.a[i], cells.b[i]
        sy, sx, dy, dx = box(cells.y[i], cells.x[i], a + 3.0)
        u, v = rotate(dy, dx, cells.angle[i])
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


def stress_fibres(cells: Cells, rng: np.random.Generator) -> np.ndarray:
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
    splat(out, cy[f] + t * np.sin(theta[f]), cx[f] + t * np.cos(theta[f]), amp[f] * ripple)
    return out


def mitotic_bodies(cells: Cells, texture: np.ndarray) -> np.ndarray:
    """Rounded mitotic cells: bright, slightly oval, mottled blobs with a soft edge."""
    out = np.zeros((HEIGHT, WIDTH))
    for i in np.flatnonzero(cells.mitotic):
        radius = cells.reach[i]
        sy, sx, dy, dx = box(cells.y[i], cells.x[i], 1.2 * radius + 4.0)
        u, v = rotate(dy, dx, cells.angle[i])
        rr = np.sqrt((u / 1.15) ** 2 + (v * 1.15) ** 2) / radius
        disc = 1.0 / (1.0 + np.exp(np.clip((rr - 1.0) * radius / 1.5, -50, 50)))
        value = cells.actin[i] * disc * (1.1 - 0.3 * rr**2) * (1.0 + 0.15 * texture[sy, sx])
        np.maximum(out[sy, sx], value, out=out[sy, sx])
    return out


def puncta(rng: np.random.Generator, territory: np.ndarray, n: int) -> np.ndarray:
    """A few small bright dots (actin patches, debris) on the cells."""
    out = np.zeros((HEIGHT, WIDTH))
    ys, xs = np.nonzero(territory)
    if ys.size and n > 0:
        pick = rng.integers(0, ys.size, size=n)
        splat(out, ys[pick] + rng.random(n), xs[pick] + rng.random(n), rng.uniform(2.0, 10.0, n))
    return out
