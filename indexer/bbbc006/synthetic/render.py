"""Draw one synthetic field of view: cells, stains, defocus and camera noise. Pure numpy, no I/O.

See :mod:`indexer.bbbc006.synthetic` for how an image is made; :func:`render_site` is the entry point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

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
from indexer.bbbc006.synthetic.cells import (
    Cells,
    draw_cells,
    mitotic_bodies,
    nuclei_images,
    puncta,
    stress_fibres,
    territories,
)
from indexer.bbbc006.synthetic.optics import (
    CONTRAST_LOSS_PER_SLICE,
    OFFSET,
    Blurrer,
    blur,
    blur_wide,
    camera,
    defocus_transfer,
    smooth_noise,
)
from indexer.bbbc006.synthetic.phenotypes import (
    PHENOTYPE_FAMILIES,
    Phenotype,
    SiteTruth,
    reference_phenotype,
    well_phenotype,
)
from indexer.bbbc006.synthetic.spec import (
    _STREAM_NOISE,
    _STREAM_REFERENCE,
    _STREAM_SITE,
    _check_ints,
    _check_plate,
    _check_seed,
    _parse_well,
    _range,
    _rng,
    _well_index,
)


@dataclass(frozen=True)
class RenderedSite:
    """The images of one field of view and its ground truth.

    ``images`` maps ``(channel, z)`` to a ``(520, 696)`` uint16 array.
    """

    truth: SiteTruth
    images: Mapping[tuple[int, int], np.ndarray]


def _clean_site(ph: Phenotype, rng: np.random.Generator) -> tuple[dict[int, np.ndarray], Cells, float]:
    """Draw one site and return its noise-free in-focus images (ADU above offset) per channel.

    Also returns the cells drawn and the confluence measured.
    """
    shape = (HEIGHT, WIDTH)
    colony_field = smooth_noise(rng, shape, 45.0, factor=4)
    # Sites of one well differ in how much of the field the colonies cover; near 1 there are no gaps
    # at all, like most dense real fields.
    confluence = min(1.0, ph.confluence + rng.normal(0.0, 0.04))
    if confluence >= 0.99:
        colony = np.ones(shape, dtype=bool)
    else:
        colony = colony_field > np.quantile(colony_field, 1.0 - confluence)
    cells = draw_cells(rng, ph, colony)
    warp = 0.12 * smooth_noise(rng, shape, 6.0, factor=2)
    labels, gap = territories(cells, colony, warp)
    territory = labels >= 0
    dna, nucleus = nuclei_images(cells, rng)

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
    texture = smooth_noise(rng, shape, 1.5)
    ragged = np.clip(1.0 + 0.6 * smooth_noise(rng, shape, 5.0, factor=2), 0.2, None)
    nucleus = nucleus * territory
    cyto = (
        1000.0 * cell_actin * (1.0 + 0.2 * texture) * (1.0 - 0.5 * nucleus + 0.8 * nucleus * (1.0 - nucleus))
    )
    cortex = ph.cortex_weight * cell_actin * ragged * np.exp(-0.5 * (border_px / 1.3) ** 2)
    rim = 600.0 * ragged * np.clip(1.0 - blur(territory.astype(np.float64), 2.0), 0.0, 1.0) * territory
    fibres = ph.fibre_weight * stress_fibres(cells, rng) * territory
    dots = 1500.0 * puncta(rng, territory, int(rng.poisson(0.5 * len(cells.y))))
    mito = 4800.0 * mitotic_bodies(cells, texture)
    actin = np.maximum(cyto + cortex + rim + fibres + dots, mito) * ph.intensity_scale
    # Cells are several µm thick, so even the best plane holds out-of-focus light: mix in a slightly
    # blurred copy. Out-of-focus glow of the neighbours fills small holes in a cell sheet (real dense
    # fields have no dark pixels), stray light and autofluorescence lift wide gaps a little.
    actin = 0.6 * actin + 0.4 * blur(actin, 2.5)
    actin += 60.0 + 0.25 * blur_wide(actin, 6.0, factor=2) + 0.12 * blur_wide(actin, 25.0)

    hoechst = 1500.0 * dna * ph.intensity_scale
    hoechst += 25.0 + 0.06 * blur_wide(hoechst, 20.0)
    return {1: hoechst, 2: actin}, cells, float(territory.mean())


_N_QUANTILES = 4097
_FAMILY_CEILING = (SATURATION - OFFSET) / 1.25


@lru_cache(maxsize=8)
def _reference_quantiles(family: str) -> dict[int, np.ndarray]:
    """Quantiles of the noise-free images of one fixed site of the family's reference class, per channel.

    Drawn from a stream of its own (never a data set's), so every seed shares the same target.
    """
    ph = reference_phenotype(family)
    clean, _, _ = _clean_site(ph, _rng(0, _STREAM_REFERENCE, PHENOTYPE_FAMILIES.index(family)))
    grid = np.linspace(0.0, 1.0, _N_QUANTILES)
    # Capped below saturation with room for the brightest wells (+25 %), so clipping at 4095 does not
    # make a bright well's distribution differ from a dim one's.
    return {c: np.minimum(np.quantile(im, grid), _FAMILY_CEILING) for c, im in clean.items()}


def _match_histogram(image: np.ndarray, quantiles: np.ndarray, scale: float) -> np.ndarray:
    """Give ``image`` the distribution ``quantiles`` (times ``scale``), keeping the order of its pixels.

    Rank-based (stable, so ties keep their raster order): the output has exactly the reference's
    first-order statistics and the image's own spatial layout.
    """
    order = np.argsort(image, axis=None, kind="stable")
    ranks = np.empty(image.size)
    ranks[order] = (np.arange(image.size) + 0.5) / image.size
    grid = np.linspace(0.0, 1.0, quantiles.size)
    return (np.interp(ranks, grid, quantiles) * scale).reshape(image.shape)


def _family_site(ph: Phenotype, rng: np.random.Generator) -> tuple[dict[int, np.ndarray], Cells, float]:
    """:func:`_clean_site`, then (outside the classic family) each channel mapped onto the family's
    reference intensity distribution scaled by the well's brightness, so classes differ only in shape."""
    clean, cells, confluence = _clean_site(ph, rng)
    if ph.family != "classic":
        ref = _reference_quantiles(ph.family)
        clean = {c: _match_histogram(im, ref[c], ph.intensity_scale) for c, im in clean.items()}
    return clean, cells, confluence


def render_site(well: str, site: int, *, seed: int = 0, channels: Sequence[int] = (1, 2),
                z_slices: Sequence[int] = (FOCUS_Z,), plate: str = DEFAULT_PLATE,
                noise: bool = True, family: str = "classic") -> RenderedSite:  # fmt: skip
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
    family : str
        Phenotype family (:data:`~indexer.bbbc006.synthetic.phenotypes.PHENOTYPE_FAMILIES`): which
        classes the well draws from. ``classic`` (the default) is the original four classes.
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

    ph = well_phenotype(well, seed, family)
    clean, cells, confluence = _family_site(ph, _rng(seed, _STREAM_SITE, row, col, site))
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
        blurrer = Blurrer(clean[channel])
        mean = float(clean[channel].mean())
        for z in z_slices:
            dz = abs(z - FOCUS_Z)
            blurred = blurrer.filter(defocus_transfer(blurrer.padded_shape, z))
            expected = mean + (blurred - mean) / (1.0 + CONTRAST_LOSS_PER_SLICE * dz)
            rng = _rng(seed, _STREAM_NOISE, row, col, site, channel, z) if noise else None
            images[(channel, z)] = camera(expected, rng)
    return RenderedSite(truth=truth, images=images)
