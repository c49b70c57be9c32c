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


@dataclass(frozen=True)
class _Stain:
    """The stain signal of one site before the optics (ADU above offset, in focus), per channel.

    ``compartment`` marks where each stain lives: the nuclei for Hoechst (1), the cell territories for
    phalloidin (2).
    """

    signal: dict[int, np.ndarray]
    compartment: dict[int, np.ndarray]
    cells: Cells
    confluence: float


def _stain_site(ph: Phenotype, rng: np.random.Generator) -> _Stain:
    """Draw one site: its cells and the stain each channel holds, before any blur or background."""
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
    nuclei = nucleus > 0.5
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
    hoechst = 1500.0 * dna * ph.intensity_scale
    return _Stain({1: hoechst, 2: actin}, {1: nuclei, 2: territory}, cells, float(territory.mean()))


def _in_focus(signal: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The noise-free in-focus image (ADU above offset) of each channel's stain: what the optics and the
    background add, the same for every family."""
    out = {}
    if 1 in signal:
        hoechst = signal[1]
        out[1] = hoechst + (25.0 + 0.06 * blur_wide(hoechst, 20.0))
    if 2 in signal:
        # Cells are several µm thick, so even the best plane holds out-of-focus light: mix in a slightly
        # blurred copy. Out-of-focus glow of the neighbours fills small holes in a cell sheet (real dense
        # fields have no dark pixels), stray light and autofluorescence lift wide gaps a little.
        actin = 0.6 * signal[2] + 0.4 * blur(signal[2], 2.5)
        actin += 60.0 + 0.25 * blur_wide(actin, 6.0, factor=2) + 0.12 * blur_wide(actin, 25.0)
        out[2] = actin
    return out


def _stain_amount(stain: _Stain) -> dict[int, float]:
    """Each channel's stain amount: its mean signal over the compartment it stains (nuclei, cells)."""
    return {
        c: float(im[stain.compartment[c]].mean()) if stain.compartment[c].any() else 0.0
        for c, im in stain.signal.items()
    }


@lru_cache(maxsize=8)
def _reference_amount(family: str) -> dict[int, float]:
    """Stain amounts of one fixed site of the family's reference class (brightness 1), per channel.

    Drawn from a stream of its own (never a data set's), so every seed shares the same target.
    """
    ph = reference_phenotype(family)
    return _stain_amount(_stain_site(ph, _rng(0, _STREAM_REFERENCE, PHENOTYPE_FAMILIES.index(family))))


def _family_site(ph: Phenotype, rng: np.random.Generator) -> tuple[dict[int, np.ndarray], Cells, float]:
    """Draw one site and return its noise-free in-focus images (ADU above offset) per channel, the cells
    drawn and the confluence measured.

    Outside the classic family each channel's stain is first scaled by one factor so that its stain
    amount is the reference class's times the well's brightness: the classes then hold the same stain
    per stained area and differ only in shape, while the optics and the camera-like background (dark
    gaps) stay those of the classic family.
    """
    stain = _stain_site(ph, rng)
    signal = stain.signal
    if ph.family != "classic":
        ref, own = _reference_amount(ph.family), _stain_amount(stain)
        signal = {
            c: im * (ref[c] * ph.intensity_scale / own[c]) if own[c] > 0 else im for c, im in signal.items()
        }
    return _in_focus(signal), stain.cells, stain.confluence


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
