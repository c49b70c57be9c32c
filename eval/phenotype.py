"""Retrieval by phenotype: how well nearest neighbours share a ground-truth label. Pure, no I/O.

Each item queries all the others (itself excluded) by cosine similarity; items with the same label are
relevant. Ties in similarity are broken by index, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ranked(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    n = len(v)
    # lexsort: primary key descending similarity, secondary key ascending index
    return np.stack([np.lexsort((np.arange(n), -sims[i]))[:-1] for i in range(n)])


def mean_average_precision(vectors: np.ndarray, labels: Sequence) -> float:
    """Mean over queries of average precision, relevant = same label (queries with no positive skipped)."""
    labels = np.asarray(labels)
    order = _ranked(vectors)
    aps = []
    for i, row in enumerate(order):
        rel = labels[row] == labels[i]
        if not rel.any():
            continue
        hits = np.cumsum(rel)
        aps.append(float((hits[rel] / (np.flatnonzero(rel) + 1)).mean()))
    return float(np.mean(aps)) if aps else float("nan")


def precision_at_k(vectors: np.ndarray, labels: Sequence, k: int) -> float:
    """Mean fraction of each item's k nearest other items that share its label."""
    labels = np.asarray(labels)
    order = _ranked(vectors)[:, :k]
    return float((labels[order] == labels[:, None]).mean())
