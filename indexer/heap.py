"""The C heap of a long build: memory freed between checkpoints is handed back to the kernel at each
checkpoint, so that the holes image-sized buffers leave in glibc's arenas do not add up with N.

Why not map every large buffer on its own (``mallopt(M_MMAP_THRESHOLD, 256 KiB)``, what the build did
before): that makes each of the model's activations a fresh mapping too, faulted in page by page and
unmapped after one layer. With the shipped tiny model that was ~7,500 page faults per image, a third of
the build's CPU time in the kernel, and 69 -> 38 images/s on the full plate. ``malloc_trim(0)`` once
per checkpoint (512 images by default) costs a few page faults per image instead: the pages it
releases are faulted in again once, when next used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def release_free_memory() -> bool:
    """Return the free memory of every glibc arena to the kernel (``malloc_trim(0)``).

    Returns ``True`` when done; ``False`` where the C library is not glibc (a memory optimisation
    only: nothing else depends on it).
    """
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
    return True
