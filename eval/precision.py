"""Precision as a perturbation: how far bf16 (and ``torch.compile``) move retrieval against fp32.

The same query images are embedded once per variant (precision x compile) with the index's own model
and preprocessing, and searched in the same index. Each variant's top-k list is compared with the fp32
list of the same query (overlap@k, identical lists), and its vectors with the fp32 vectors (cosine). A
user then chooses a precision knowing what it costs in retrieval, not only in speed.

The comparison is pure (:func:`compare_lists`); :func:`run_precision` embeds and searches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval import metrics
from retriever.search import QueryOptions, Retriever

#: The reference every variant is compared with.
REFERENCE = "fp32"


@dataclass(frozen=True)
class Variant:
    """One way to run the model: its precision and whether it is compiled."""

    precision: str
    compile: bool = False

    @property
    def name(self) -> str:
        """``fp32``, ``bf16``, ``fp32+compile`` ..."""
        return self.precision + ("+compile" if self.compile else "")


def variants(with_compile: bool) -> tuple[Variant, ...]:
    """fp32 (the reference) and bf16, each compiled too with ``with_compile``."""
    base = (Variant("fp32"), Variant("bf16"))
    return base + tuple(Variant(v.precision, True) for v in base) if with_compile else base


def compare_lists(
    reference: Sequence[Sequence[int]],
    other: Sequence[Sequence[int]],
    ref_vectors: np.ndarray,
    vectors: np.ndarray,
    k: int,
) -> dict[str, float | int]:
    """Overlap@k and identical-list share of ``other``'s top-k lists against ``reference``'s (same
    queries, same order), and the cosine of each query vector to its reference vector."""
    overlaps = np.array([metrics.overlap_at_k(a, b, k) for a, b in zip(reference, other, strict=True)])
    cosines = np.sum(ref_vectors * vectors, axis=1)
    return {
        "n": len(overlaps),
        "overlap_at_k": float(overlaps.mean()),
        "overlap_at_k_min": float(overlaps.min()),
        "identical_lists": float(np.mean([list(a[:k]) == list(b[:k]) for a, b in zip(reference, other)])),
        "cosine_mean": float(cosines.mean()),
        "cosine_min": float(cosines.min()),
    }


def run_precision(
    open_retriever: Callable[[Variant], Retriever],
    raws: Sequence[np.ndarray],
    k: int = 10,
    with_compile: bool = False,
) -> list[dict[str, Any]]:
    """Embed ``raws`` (decoded query images) under each variant, search, and compare with fp32.

    ``open_retriever`` opens the index's retriever with a variant's precision and compile setting.
    Returns one row per variant: the comparison of :func:`compare_lists` plus the precision the encoder
    ran at and the rule that chose it, and the embedding time (first batch apart: it holds the compile).
    """
    rows, ref = [], None
    for variant in variants(with_compile):
        retriever = open_retriever(variant)
        t0 = time.perf_counter()
        first = retriever.embed_arrays(raws[:1])
        t1 = time.perf_counter()
        rest = retriever.embed_arrays(raws[1:])
        t2 = time.perf_counter()
        vectors = np.concatenate([first, rest])
        hits = retriever.search_vectors(vectors, QueryOptions(k=k))
        lists = [[h.id for h in q] for q in hits]
        if ref is None:
            ref = (lists, vectors)
        encoder = retriever.encoder
        rows.append(
            {
                "variant": variant.name,
                "precision": encoder.precision,
                "compile": variant.compile,
                **compare_lists(ref[0], lists, ref[1], vectors, k),
                "first_image_s": t1 - t0,
                "ms_per_image": 1000 * (t2 - t1) / max(len(raws) - 1, 1),
            }
        )
    return rows
