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


def average_precisions(vectors: np.ndarray, labels: Sequence) -> np.ndarray:
    """Average precision of each item as a query, relevant = same label (NaN where it has no positive).

    As copairs computes it: the query itself is left out, ranks by cosine similarity, ties by index.
    """
    labels = np.asarray(labels)
    order = _ranked(vectors)
    aps = np.full(len(labels), np.nan)
    for i, row in enumerate(order):
        rel = labels[row] == labels[i]
        if rel.any():
            hits = np.cumsum(rel)
            aps[i] = float((hits[rel] / (np.flatnonzero(rel) + 1)).mean())
    return aps


def mean_average_precision(vectors: np.ndarray, labels: Sequence) -> float:
    """Mean over queries of average precision, relevant = same label (queries with no positive skipped)."""
    aps = average_precisions(vectors, labels)
    return float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")


def map_interval(
    vectors: np.ndarray, labels: Sequence, groups: Sequence, seed: int = 0
) -> tuple[float, float, float]:
    """mAP with a 95 % interval that resamples ``groups`` (wells): ``(mAP, low, high)``.

    Images of one well share its phenotype draw, so the well, not the image, is the independent unit:
    the per-query APs are bootstrapped with one cluster per well (:func:`eval.intervals.cluster_bootstrap`).
    """
    from eval.intervals import cluster_bootstrap

    est = cluster_bootstrap(average_precisions(vectors, labels), list(groups), (0.0, 1.0), seed=seed)
    return est.mean, est.low, est.high


def chance_map(labels: Sequence) -> float:
    """Expected mAP of a random ranking: per query, the share of the other items that are relevant.

    (Exact in the limit of many items; for n items the expected AP of a random ranking is a little
    above the prevalence, so this is the usual floor, as copairs reports it.)
    """
    labels = np.asarray(labels)
    n = len(labels)
    prev = [((labels == c).sum() - 1) / (n - 1) for c in labels]
    return float(np.mean([p for p in prev if p > 0]))


def precision_at_k(vectors: np.ndarray, labels: Sequence, k: int) -> float:
    """Mean fraction of each item's k nearest other items that share its label."""
    labels = np.asarray(labels)
    order = _ranked(vectors)[:, :k]
    return float((labels[order] == labels[:, None]).mean())
