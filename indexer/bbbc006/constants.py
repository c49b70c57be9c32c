"""The facts of BBBC006 (Broad Bioimage Benchmark Collection, set 6), written once. Pure: no I/O.

One 384-well plate of U2OS cells imaged at 20x: 2 sites per well, Hoechst (``w1``) and phalloidin
(``w2``) channels, 34 z-slices 2 um apart with slice 16 in focus, 696x520 16-bit LZW TIFFs holding
12-bit camera values (saturating at 4095).
"""

from __future__ import annotations

#: Full-scale camera count: the camera is 12-bit, so real values stop at 4095.
SATURATION = 4095
#: The in-focus z-slice.
FOCUS_Z = 16
#: Distance between neighbouring z-slices, in micrometres.
Z_STEP_UM = 2.0
#: Number of z-slices (0 .. 33).
N_Z = 34
#: Every z-slice index of the set.
Z_SLICES = range(N_Z)
#: Image height and width in pixels.
HEIGHT, WIDTH = 520, 696
#: Plate rows (A .. P) and columns (1 .. 24) of the 384-well plate.
PLATE_ROWS = "ABCDEFGHIJKLMNOP"
N_COLUMNS = 24
#: Sites per well and channels (1 Hoechst, 2 phalloidin).
SITES = (1, 2)
CHANNELS = (1, 2)
#: The plate name at the start of every real file name.
DEFAULT_PLATE = "mcf-z-stacks-03212011"


def check_z(z: int) -> bool:
    """True when ``z`` is a z-slice of BBBC006 (0 .. 33)."""
    return z in Z_SLICES
