"""What a synthetic well looks like (its phenotype, drawn from the seed) and the ground truth of a site.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from indexer.bbbc006.synthetic.spec import _STREAM_WELL, _check_seed, _parse_well, _rng, _well_index


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
