"""What a synthetic well looks like (its phenotype, drawn from the seed) and the ground truth of a site.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from indexer.bbbc006.synthetic.spec import (
    _FAMILY_NAMES,
    _STREAM_WELL,
    _check_seed,
    _parse_well,
    _rng,
    _well_index,
)
from indexer.core.errors import ConfigError


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
    family : str
        The family of :data:`PHENOTYPE_FAMILIES` the class belongs to. Every family but ``classic``
        scales each site's stain so that it holds the family's reference stain per stained area (nuclei
        for Hoechst, cells for phalloidin), so its classes differ only in shape, texture and layout.
    nuclear_aspect : float or None
        Aspect ratio of every interphase nucleus (area kept); None draws 1.0-1.6 per nucleus.
    aligned_fibres : bool
        Cells, their bodies and their stress fibres all point along one direction per site.
    fibre_weight, cortex_weight : float
        Brightness of stress fibres and of the cortical actin at cell borders (ADU scale).
    """

    phenotype_class: str
    cell_count: float
    nuclear_radius_px: float
    intensity_scale: float
    confluence: float
    mitotic_fraction: float
    family: str = "classic"
    nuclear_aspect: float | None = None
    aligned_fibres: bool = False
    fibre_weight: float = 550.0
    cortex_weight: float = 900.0


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

# Families whose classes hold the same stain per stained area (the renderer scales each site's stain
# to the family's reference, before the optics, so gaps stay camera-dark) and differ only in
# morphology, so that brightness alone cannot tell them apart and a model has to see shape, texture or
# layout. The share of empty field still shows in a histogram (clustering): that is morphology too.
_BASE = {"intensity_scale": 1.0, "mitotic_fraction": 0.03}
_NUCLEAR = (
    # Nuclear size and shape at fixed total DNA: count x area is the same in the three classes.
    Phenotype("nuclear-small", cell_count=240, nuclear_radius_px=8.0, confluence=0.95, family="nuclear",
              **_BASE),
    Phenotype("nuclear-large", cell_count=91, nuclear_radius_px=13.0, confluence=0.95, family="nuclear",
              **_BASE),
    Phenotype("nuclear-elongated", cell_count=148, nuclear_radius_px=10.2, confluence=0.95,
              family="nuclear", nuclear_aspect=3.0, **_BASE),
)  # fmt: skip
_ACTIN = (
    # Same cells; stress fibres along one direction, stress fibres in every direction, or cortical
    # actin at the borders with no fibres.
    Phenotype("actin-aligned", cell_count=150, nuclear_radius_px=10.5, confluence=0.95, family="actin",
              aligned_fibres=True, fibre_weight=1400.0, cortex_weight=300.0, **_BASE),
    Phenotype("actin-random", cell_count=150, nuclear_radius_px=10.5, confluence=0.95, family="actin",
              fibre_weight=1400.0, cortex_weight=300.0, **_BASE),
    Phenotype("actin-cortical", cell_count=150, nuclear_radius_px=10.5, confluence=0.95, family="actin",
              fibre_weight=0.0, cortex_weight=1800.0, **_BASE),
)  # fmt: skip
_CLUSTERING = (
    # The same number of cells spread over the whole field, in a few colonies, or in tight clusters.
    Phenotype("clustering-dispersed", cell_count=110, nuclear_radius_px=10.0, confluence=1.0,
              family="clustering", **_BASE),
    Phenotype("clustering-colonies", cell_count=110, nuclear_radius_px=10.0, confluence=0.6,
              family="clustering", **_BASE),
    Phenotype("clustering-tight", cell_count=110, nuclear_radius_px=10.0, confluence=0.35,
              family="clustering", **_BASE),
)  # fmt: skip
_FAMILIES: dict[str, tuple[Phenotype, ...]] = {
    "classic": _CLASSES,
    "nuclear": _NUCLEAR,
    "actin": _ACTIN,
    "clustering": _CLUSTERING,
}
#: Phenotype families: ``classic`` (the default: classes that differ in counts, size *and* brightness)
#: and three whose classes differ only in morphology at the same stain per stained area.
PHENOTYPE_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
assert PHENOTYPE_FAMILIES == _FAMILY_NAMES  # the config validates against the same names


def check_family(family: str) -> str:
    """Return ``family`` if it is one of :data:`PHENOTYPE_FAMILIES`; raise ConfigError otherwise."""
    if family not in _FAMILIES:
        raise ConfigError(f"unknown phenotype family {family!r}: use one of {', '.join(PHENOTYPE_FAMILIES)}")
    return family


def family_classes(family: str) -> tuple[str, ...]:
    """Return the class names of one phenotype family (raise ConfigError for an unknown family)."""
    return tuple(p.phenotype_class for p in _FAMILIES[check_family(family)])


def reference_phenotype(family: str) -> Phenotype:
    """The class whose stain per stained area every site of ``family`` is scaled to (its first)."""
    return _FAMILIES[check_family(family)][0]


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


def well_phenotype(well: str, seed: int = 0, family: str = "classic") -> Phenotype:
    """Return the phenotype of ``well`` under ``seed``: a class of ``family`` drawn at random, plus
    per-well jitter.

    Raises
    ------
    ConfigError
        If the well is not on a 384-well plate, the seed is negative or the family unknown.
    """
    _check_seed(seed)
    classes = _FAMILIES[check_family(family)]
    row, col = _well_index(_parse_well(well))
    rng = _rng(seed, _STREAM_WELL, row, col)
    base = classes[int(rng.integers(len(classes)))]
    jitter = {k: float(np.exp(rng.normal(0.0, s))) for k, s in _WELL_JITTER.items()}
    return replace(
        base,
        cell_count=base.cell_count * jitter["cell_count"],
        nuclear_radius_px=base.nuclear_radius_px * jitter["nuclear_radius_px"],
        intensity_scale=base.intensity_scale * jitter["intensity_scale"],
        confluence=float(np.clip(base.confluence + rng.normal(0.0, 0.03), 0.3, 1.0)),
        mitotic_fraction=float(min(base.mitotic_fraction * jitter["mitotic_fraction"], 0.5)),
    )
