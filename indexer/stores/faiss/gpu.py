"""A GPU copy of the FAISS index for unfiltered searches, only where it demonstrably works.

``faiss-gpu`` wheels are built for a list of CUDA architectures; on a card outside that list the copy
may fail, or kernels may fail at the first search. So a GPU copy is made only when faiss has GPU support
and sees a GPU, and is kept only if a probe search on it returns what the CPU index returns; otherwise
searches stay on the CPU, with one warning that says why. The CPU index stays the one that is written
and saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def faiss_gpu_count(faiss: Any) -> int:
    """GPUs this faiss build can use (0 for faiss-cpu)."""
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # a GPU build without a working driver
        return 0


def clone_to_gpus(faiss: Any, index: Any) -> Any:
    """A copy of ``index`` spread over every visible GPU."""
    return faiss.index_cpu_to_all_gpus(index)


def gpu_search_index(
    faiss: Any, index: Any, probe: np.ndarray, clone: Callable[[Any, Any], Any] = clone_to_gpus
) -> Any | None:
    """A copy of ``index`` made by ``clone`` that agrees with it on the ``probe`` queries, or None (CPU
    search) with one warning saying why."""
    if index is None or index.ntotal == 0 or not len(probe):
        return None
    k = int(min(10, index.ntotal))
    try:
        gpu = clone(faiss, index)
        want_scores, want_ids = index.search(probe, k)
        got_scores, got_ids = gpu.search(probe, k)
        # Ids may swap between equal scores; the scores must agree.
        if not np.allclose(got_scores, want_scores, atol=1e-4) or not np.array_equal(
            got_ids[:, 0], want_ids[:, 0]
        ):
            raise RuntimeError("its results differ from the CPU index's")
    except Exception as e:  # no kernels for this card, out of GPU memory, a wrong answer
        log.warning("FAISS GPU index not used (%s: %s); searching on the CPU", type(e).__name__, e)
        return None
    log.info("FAISS unfiltered searches run on the GPU")
    return gpu
