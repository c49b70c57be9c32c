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


#: How each field's valid values read in a message.
VALID_TEXT = {
    "well": "A01-P24",
    "row": "A-P",
    "column": "1-24",
    "site": "1, 2",
    "channel": "w1, w2",
    "z": "0-33",
}


def is_bbbc006_value(field: str, value: object) -> bool:
    """True when ``value`` (normalised: well ``A01``, channel ``w1``) is a value the real BBBC006 data
    set has for ``field``; any plate, path or tag is."""
    text = str(value)
    if field == "well":
        return (
            len(text) == 3
            and text[0] in PLATE_ROWS
            and text[1:].isdigit()
            and 1 <= int(text[1:]) <= N_COLUMNS
        )
    if field == "row":
        return len(text) == 1 and text in PLATE_ROWS
    if field == "column":
        return isinstance(value, int) and 1 <= value <= N_COLUMNS
    if field == "site":
        return value in SITES
    if field == "channel":
        return value in tuple(f"w{c}" for c in CHANNELS)
    if field == "z":
        return isinstance(value, int) and check_z(value)
    return True
