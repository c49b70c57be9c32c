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


# --- mAP as copairs defines it (positives in another well, negatives by label or controls) ----------------


def expected_ap(n_pos: int, n_neg: int) -> float:
    """Expected AP of a random ranking of ``n_pos`` positives among ``n_pos + n_neg`` (copairs' exact
    finite-sample formula): ``(1/L) * ((M-1)/(L-1) * (L - H_L) + H_L)``, ``L = M + N``."""
    total = n_pos + n_neg
    if n_pos <= 0 or total < 1:
        return 0.0
    if n_pos == total:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, total + 1)))
    return (1.0 / total) * ((n_pos - 1.0) / (total - 1.0) * (total - harmonic) + harmonic)


def pair_average_precisions(
    vectors: np.ndarray,
    labels: Sequence,
    groups: Sequence,
    controls: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query AP over the query's positive and negative pairs only, as copairs' ``average_precision``.

    Parameters
    ----------
    vectors : np.ndarray
        ``(n, d)`` profiles, compared by cosine similarity.
    labels : sequence
        Each profile's label (e.g. a treatment).
    groups : sequence
        Each profile's well (or its own id where there are no wells): a positive shares the label in
        another group, so the images of one well never count as each other's replicates.
    controls : np.ndarray of bool, optional
        Without it, negatives are the profiles with another label. With it, negatives are the controls
        only (copairs' "against the negative controls"), and controls are not queries.

    Returns
    -------
    tuple of np.ndarray
        ``(ap, n_pos, n_total)`` per profile; ``ap`` is NaN for a profile that is no query or has no
        positive or no negative pair. Ranks by decreasing similarity, ties by index.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)
    sims = v @ v.T
    n = len(v)
    aps = np.full(n, np.nan)
    n_pos = np.zeros(n, dtype=np.int64)
    n_total = np.zeros(n, dtype=np.int64)
    for i in range(n):
        if controls is not None and controls[i]:
            continue
        pos = (labels == labels[i]) & (groups != groups[i])
        neg = controls.copy() if controls is not None else labels != labels[i]
        neg[i] = pos[i] = False
        members = np.flatnonzero(pos | neg)
        n_pos[i], n_total[i] = int(pos.sum()), len(members)
        if not pos.any() or not neg.any():
            continue
        order = members[np.lexsort((members, -sims[i, members]))]
        rel = pos[order]
        hits = np.cumsum(rel)
        aps[i] = float((hits[rel] / (np.flatnonzero(rel) + 1)).mean())
    return aps, n_pos, n_total


def chance_of(n_pos: np.ndarray, n_total: np.ndarray, aps: np.ndarray) -> float:
    """Mean over the scored queries (finite ``aps``) of :func:`expected_ap`: the mAP of random rankings."""
    keep = np.isfinite(aps)
    if not keep.any():
        return float("nan")
    return float(np.mean([expected_ap(int(p), int(t - p)) for p, t in zip(n_pos[keep], n_total[keep])]))


def well_profiles(
    vectors: np.ndarray, labels: Sequence, wells: Sequence
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean profile per well: ``(profiles, label per well, well names)``, wells in sorted order.

    Raises
    ------
    ValueError
        When the images of one well carry different labels (a well is one treatment).
    """
    labels = np.asarray(labels)
    wells = np.asarray(wells).astype(str)
    names = np.unique(wells)
    out, out_labels = [], []
    for w in names:
        members = wells == w
        values = np.unique(labels[members])
        if len(values) != 1:
            raise ValueError(
                f"well {w} holds images labelled {', '.join(map(str, values[:3]))}: use --level image"
            )
        out.append(np.asarray(vectors, dtype=np.float64)[members].mean(axis=0))
        out_labels.append(values[0])
    return np.stack(out), np.asarray(out_labels), names
