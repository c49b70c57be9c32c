"""The C heap of a long build: image-sized buffers straight from the kernel, so that freeing them
returns memory instead of leaving holes that grow with the number of images.

Why: glibc serves a request of at least ``M_MMAP_THRESHOLD`` (128 KiB) with its own ``mmap``, unmapped
again on ``free``, but it raises that threshold to the size of each such block freed (up to 32 MiB).
After the first decoded image is freed, every TIFF's bytes (0.58 MB), decoded pixels (0.72 MB) and
preprocessed tensor come from the heaps of the decode threads' arenas instead, between longer-lived
small blocks; the holes they leave are reused only in part. Measured (`test` model, 9,216 images of
the synthetic plate, one in-process build): peak RSS 611 MB, 58 MB free but held in the arenas at the
end; with the threshold fixed at 256 KiB, 578 MB and 4 MB. Fixing the threshold also stops its rise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameter number for the mmap threshold (malloc.h: ``M_MMAP_THRESHOLD -3``).
M_MMAP_THRESHOLD = -3
#: Blocks at least this large are mapped and unmapped on their own: under one BBBC006 image's bytes
#: (0.58 MB) and pixels, above the small blocks a build keeps per image.
MMAP_THRESHOLD = 256 * 1024


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process (see the module docstring).

    Returns ``True`` when set; ``False`` where the C library is not glibc (the setting is a memory
    optimisation only: nothing else depends on it).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused", threshold)
    return done
