"""A synthetic BBBC006 look-alike: same folders, file names and TIFF layout, with known phenotypes.

The real set (:mod:`indexer.bbbc006.constants`) is one 384-well plate of U2OS cells, 2 sites per well, Hoechst
(``w1``) and phalloidin (``w2``) channels, 34 z-slices 2 µm apart with z16 in focus, 696x520 16-bit
LZW TIFFs with 12-bit values. This module writes images that code reading BBBC006 cannot tell apart
by layout, plus a ground-truth CSV of what was drawn (phenotype class, cell count, nuclear size, ...),
so that retrieval by phenotype and robustness to defocus can be measured on data of known content.

How an image is made:

1. Each well draws a phenotype (one of :data:`PHENOTYPE_CLASSES`, plus per-well jitter) from
   ``(seed, well)``; both sites of a well share it. Other families (:data:`PHENOTYPE_FAMILIES`:
   ``nuclear`` size/shape, ``actin`` fibre orientation vs cortex, ``clustering``) have classes that
   differ only in morphology: each site's stain (before the optics) is scaled by one factor per channel
   so that its mean over the stained area (nuclei for Hoechst, cells for phalloidin) is the family's
   reference class's (times the well's brightness); the optics and the dark, camera-like gaps are the
   classic family's, so brightness inside the cells cannot tell the classes apart.
2. Each site draws its geometry once from ``(seed, well, site)``: colonies (a thresholded smooth random
   field), nuclei placed inside them, each cell's territory (a weighted Voronoi tessellation cut by
   the colony), actin fibres, rounded bright mitotic cells. This gives a noise-free in-focus image
   per channel; both channels show the same cells.
3. Each z-slice blurs that image with the widefield defocus point-spread function of geometric optics,
   a uniform disk whose radius grows in proportion to ``|z - 16|`` (the cone of light of an NA 0.45
   objective, cut by a plane ``dz`` from focus), convolved with the in-focus spot (a little faster
   above focus than below, see :func:`defocus_radius`). Unlike a Gaussian, whose transfer function
   only fades, the disk's transfer function (an Airy-like ``2 J1(x) / x``) fades *and* flips the
   contrast of fine structure, as real defocus does. Each slice also loses some contrast to haze,
   then gets Poisson (shot) and Gaussian (read) camera noise on a camera offset and is clipped to
   12 bits, saturating at 4095. The noise of each image comes from ``(seed, well, site, channel, z)``.

Every random draw is keyed by what it belongs to, never by what else was asked for: a well written
alone is byte-identical to the same well written in a full plate, and the same seed gives the same
bytes (on the same numpy build: FFT rounding may differ between builds).

Only numpy and tifffile are needed (blur by FFT), so the core install can run it. Every TIFF says
it is synthetic in its ImageDescription (:data:`indexer.images.decode.SYNTHETIC_MARKER`).

Modules, one job each: :mod:`.spec` (what to write: config, well specs, keyed random streams, file
names), :mod:`.phenotypes` (what a well looks like, and the ground truth), :mod:`.render` (drawing one
field of view, no I/O) and :mod:`.write` (TIFFs and the ground-truth CSV).
"""

from indexer.bbbc006.synthetic.optics import defocus_radius, defocus_transfer
from indexer.bbbc006.synthetic.phenotypes import (
    GROUND_TRUTH_COLUMNS,
    PHENOTYPE_CLASSES,
    PHENOTYPE_FAMILIES,
    Phenotype,
    SiteTruth,
    family_classes,
    well_phenotype,
)
from indexer.bbbc006.synthetic.render import RenderedSite, render_site
from indexer.bbbc006.synthetic.spec import SyntheticConfig, file_uuid, image_path, well_range
from indexer.bbbc006.synthetic.write import GROUND_TRUTH_NAME, GenerationSummary, generate

__all__ = [
    "GROUND_TRUTH_COLUMNS",
    "GROUND_TRUTH_NAME",
    "PHENOTYPE_CLASSES",
    "PHENOTYPE_FAMILIES",
    "GenerationSummary",
    "Phenotype",
    "RenderedSite",
    "SiteTruth",
    "SyntheticConfig",
    "defocus_radius",
    "defocus_transfer",
    "family_classes",
    "file_uuid",
    "generate",
    "image_path",
    "render_site",
    "well_phenotype",
    "well_range",
]
