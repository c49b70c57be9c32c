"""The C heap of a long build: memory freed between checkpoints is handed back to the kernel at each
checkpoint, so that the holes image-sized buffers leave in glibc's arenas do not add up with N.

Why not map every large buffer on its own (``mallopt(M_MMAP_THRESHOLD, 256 KiB)``, what the build did
before): that makes each of the model's activations a fresh mapping too, faulted in page by page and
unmapped after one layer. With the shipped tiny model that was ~7,500 page faults per image, a third of
the build's CPU time in the kernel, and 69 -> 38 images/s on the full plate. ``malloc_trim(0)`` once
per checkpoint (512 images by default) costs a few page faults per image instead: the pages it
releases are faulted in again once, when next used.

pyarrow (the FAISS store's shards) allocates from its own pool, mimalloc by default, which keeps freed
pages for reuse where ``malloc_trim`` cannot see them, so its share grew with the shards written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)


def release_free_memory() -> bool:
    """Return the free memory of every glibc arena to the kernel (``malloc_trim(0)``), and that of
    pyarrow's pool when pyarrow is loaded.

    Returns ``True`` when glibc's was trimmed; ``False`` where the C library is not glibc (a memory
    optimisation only: nothing else depends on it).
    """
    arrow = sys.modules.get("pyarrow")  # never imported for this: a build without shards has none
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
    return True
