"""Retrieval-robustness metrics. Pure: arrays and id lists in, numbers out; no I/O.

Three families:

- **Self-retrieval**: where the clean source image ranks among a perturbed query's results
  (:func:`self_rank`, :func:`self_at_1`).
- **Top-k consistency** between the result ids of a clean query and of its perturbed version
  (:func:`overlap_at_k`, :func:`jaccard_at_k`, :func:`rank_biased_overlap`,
  :func:`kendall_tau_intersection`). Result lists hold unique ids, best first. Identical lists give
  exactly 1 for every one of them, so severity 0 reads 1.0, not 0.9999999999999999.
- **Embedding drift** between clean and perturbed vectors (:func:`cosine_distance`,
  :func:`l2_distance`), put on the scale of the index by :func:`median_nn_distance` and
  :func:`normalised_drift`.

Chance levels live in :mod:`eval.chance`, intervals in :mod:`eval.intervals`, the
per-(perturbation, severity) summary in :mod:`eval.summary`. ANN recall of a store against exact search
is :func:`indexer.stores.recall.recall_at_k`, shared with ``mae-index verify``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Rows per block in :func:`median_nn_distance`, bounding memory at ``block x n`` similarities.
_NN_BLOCK = 1024
#: Rows per block in :func:`median_pairwise_cosine`, whose pairs (n^2 / 2 floats) are held as well.
_PAIR_BLOCK = 256


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _ids(ids: Sequence[int] | np.ndarray) -> list[Any]:
    # A list of plain Python values: set() and == then behave the same for lists and numpy arrays.
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


# --- self-retrieval ---------------------------------------------------------------------------------


def self_rank(result_ids: Sequence[int] | np.ndarray, source_id: int) -> int | None:
    """1-based rank of the clean source image in a perturbed query's results.

    Parameters
    ----------
    result_ids : sequence of int
        The perturbed query's result ids, best first.
    source_id : int
        The id of the unperturbed image the query was made from.

    Returns
    -------
    int or None
        The rank (1 = first), or ``None`` when the source is not among the results.
    """
    for rank, rid in enumerate(_ids(result_ids), start=1):
        if rid == source_id:
            return rank
    return None


def self_at_1(result_ids: Sequence[int] | np.ndarray, source_id: int) -> float:
    """Whether the clean source is the first result of its perturbed query.

    Parameters
    ----------
    result_ids : sequence of int
        The perturbed query's result ids, best first.
    source_id : int
        The id of the unperturbed image.

    Returns
    -------
    float
        1.0 when ``result_ids[0] == source_id``, else 0.0 (also for an empty list).
    """
    return 1.0 if self_rank(result_ids, source_id) == 1 else 0.0


# --- top-k consistency ------------------------------------------------------------------------------


def overlap_at_k(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, k: int) -> float:
    """Share of the top-k that two result lists have in common, ``|a[:k] ∩ b[:k]| / k``.

    Parameters
    ----------
    a, b : sequence of int
        Result ids, best first (e.g. clean and perturbed query).
    k : int
        Depth (>= 1).

    Returns
    -------
    float
        In [0, 1]. When the lists are shorter than ``k`` (an index smaller than ``k``, or a filter),
        the denominator is the longer of the two cut lists, so identical lists still give 1.0; two
        empty lists give 1.0.
    """
    k = _check_k(k)
    sa, sb = set(_ids(a)[:k]), set(_ids(b)[:k])
    denom = max(len(_ids(a)[:k]), len(_ids(b)[:k]))
    return len(sa & sb) / denom if denom else 1.0


def jaccard_at_k(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, k: int) -> float:
    """Jaccard index of the top-k sets, ``|a[:k] ∩ b[:k]| / |a[:k] ∪ b[:k]|``.

    Parameters
    ----------
    a, b : sequence of int
        Result ids, best first.
    k : int
        Depth (>= 1).

    Returns
    -------
    float
        In [0, 1]; two empty lists give 1.0.
    """
    k = _check_k(k)
    sa, sb = set(_ids(a)[:k]), set(_ids(b)[:k])
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def rank_biased_overlap(
    a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, p: float = 0.9, k: int | None = None
) -> float:
    """Extrapolated rank-biased overlap, RBO_ext (Webber, Moffat and Zobel 2010, eq. 32).

    For two rankings seen to the same depth ``k``, with ``X_d = |a[:d] ∩ b[:d]|``::

        RBO_ext = X_k / k * p**k + (1 - p) / p * sum_{d=1..k} X_d / d * p**d

    It assumes the agreement seen at depth ``k`` continues below it, so it is a point estimate of the
    full RBO (unlike RBO_min or RBO_res, which bound it). Identical lists give exactly 1.0 and
    disjoint lists exactly 0.0.

    Parameters
    ----------
    a, b : sequence of int
        Rankings of unique ids, best first.
    p : float
        Persistence in (0, 1): the weight of depth ``d`` falls as ``p**d``; with 0.9 the top 10 carry
        about 86 % of the weight.
    k : int, optional
        Depth; default (and at most) the length of the shorter list. Lists of unequal length are cut to
        the shorter one, which makes them the equal-length case the formula above covers.

    Returns
    -------
    float
        In [0, 1]; 1.0 for two empty lists, 0.0 when only one is empty.

    Raises
    ------
    ValueError
        If ``p`` is outside (0, 1), ``k`` < 1, or a list repeats an id within the depth.
    """
    if not 0 < p < 1:
        raise ValueError(f"RBO persistence p must be in (0, 1), got {p}")
    la, lb = _ids(a), _ids(b)
    depth = min(len(la), len(lb)) if k is None else min(_check_k(k), len(la), len(lb))
    la, lb = la[:depth], lb[:depth]
    if len(set(la)) != depth or len(set(lb)) != depth:
        raise ValueError("RBO needs rankings without repeated ids")
    if depth == 0:
        return 1.0 if not _ids(a) and not _ids(b) else 0.0
    if la == lb:
        return 1.0  # exactly: the sum below gives 1 only up to rounding
    seen_a: set[Any] = set()
    seen_b: set[Any] = set()
    overlap = 0  # X_d, updated incrementally
    total = 0.0
    for d in range(1, depth + 1):
        x, y = la[d - 1], lb[d - 1]
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += overlap / d * p**d
    return float(overlap / depth * p**depth + (1 - p) / p * total)


def kendall_tau_intersection(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Kendall tau-b between the positions, in ``a`` and in ``b``, of the ids present in both.

    Items in only one list are ignored, so this measures whether the shared results keep their order;
    :func:`overlap_at_k` measures how many are shared. Computed with ``scipy.stats.kendalltau``
    (tau-b; positions have no ties, so it equals tau-a).

    Parameters
    ----------
    a, b : sequence of int
        Rankings of unique ids, best first (pass the top-k of each).

    Returns
    -------
    float
        In [-1, 1]; exactly 1.0 when the shared ids are in the same order. NaN when fewer than 2 ids
        are shared: with no pair to compare the order is undefined (not perfect, not random), and a NaN
        is dropped by :func:`eval.summary.summarise` rather than pulling a mean either way.
    """
    from scipy.stats import kendalltau

    la, lb = _ids(a), _ids(b)
    pos_b = {x: i for i, x in enumerate(lb)}
    common = [x for x in la if x in pos_b]
    if len(common) < 2:
        return math.nan
    ranks_b = [pos_b[x] for x in common]  # in a's order
    if ranks_b == sorted(ranks_b):
        return 1.0  # same order: exactly, where scipy may give 0.9999999999999999
    return float(kendalltau(np.arange(len(common)), ranks_b).statistic)


# --- embedding drift --------------------------------------------------------------------------------


def _pair(clean: np.ndarray, perturbed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.atleast_2d(np.asarray(clean, dtype=np.float64))
    q = np.atleast_2d(np.asarray(perturbed, dtype=np.float64))
    if c.shape != q.shape or c.ndim != 2:
        raise ValueError(f"clean and perturbed must be matching (n, d) arrays, got {c.shape} and {q.shape}")
    return c, q


def cosine_distance(clean: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Row-wise cosine distance ``1 - cos(clean_i, perturbed_i)``.

    Parameters
    ----------
    clean, perturbed : np.ndarray
        ``(n, d)`` arrays (or single ``(d,)`` vectors) of matching shape.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64 in [0, 2]. Identical rows give exactly 0; a zero vector has cosine 0 with
        anything, so distance 1 (as in ``sklearn.metrics.pairwise.cosine_distances``).
    """
    c, q = _pair(clean, perturbed)
    den = np.linalg.norm(c, axis=1) * np.linalg.norm(q, axis=1)
    cos = np.einsum("ij,ij->i", c, q) / np.where(den > 0, den, 1.0)
    dist = np.clip(1.0 - cos, 0.0, 2.0)
    # An unperturbed (severity 0) embedding must read zero drift, not a rounding residue of 1e-16.
    dist[np.all(c == q, axis=1)] = 0.0
    return dist


def l2_distance(clean: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distance ``||clean_i - perturbed_i||``.

    Parameters
    ----------
    clean, perturbed : np.ndarray
        ``(n, d)`` arrays (or single ``(d,)`` vectors) of matching shape.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64, >= 0; exactly 0 for identical rows.
    """
    c, q = _pair(clean, perturbed)
    return np.linalg.norm(c - q, axis=1)


def median_nn_distance(vectors: np.ndarray) -> float:
    """Median over points of the cosine distance to their nearest other point (exact, brute force).

    The typical gap between neighbouring images in the index: a drift of this size is enough to swap
    an image with its neighbour, so it is the natural unit for :func:`normalised_drift`.

    Parameters
    ----------
    vectors : np.ndarray
        ``(n, d)`` embeddings, n >= 2 (pass a seeded sample for a large index: this is O(n^2 d)).

    Returns
    -------
    float
        The median nearest-neighbour cosine distance (0 when most points have an exact duplicate).

    Raises
    ------
    ValueError
        If ``vectors`` is not 2-D or has fewer than 2 rows.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or len(v) < 2:
        raise ValueError(f"need an (n, d) array with n >= 2, got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms > 0, norms, 1.0)
    best = np.empty(len(v))
    for start in range(0, len(v), _NN_BLOCK):
        sims = v[start : start + _NN_BLOCK] @ v.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf  # a point is not its own neighbour
        best[start : start + _NN_BLOCK] = sims.max(axis=1)
    return float(np.median(np.clip(1.0 - best, 0.0, 2.0)))


def median_pairwise_cosine(vectors: np.ndarray) -> float:
    """Median cosine similarity over all pairs of distinct rows.

    How spread out an index is: near 1 means the embeddings are nearly parallel, so tiny drifts reorder
    neighbours (the shipped small model gives about 0.9 on BBBC006-like images).

    Parameters
    ----------
    vectors : np.ndarray
        ``(n, d)``, n >= 2 (pass a seeded sample for a large index: this is O(n^2 d)).

    Returns
    -------
    float
        The median of the ``n (n - 1) / 2`` pairwise cosine similarities.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or len(v) < 2:
        raise ValueError(f"need an (n, d) array with n >= 2, got shape {v.shape}")
    v = v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)
    # The pairs' values only (n (n - 1) / 2 floats), filled a block of rows at a time: the full n x n
    # matrix and its triu_indices took ~80 MB at mae-eval's 2,000-vector sample.
    n = len(v)
    pairs = np.empty(n * (n - 1) // 2)
    at = 0
    for start in range(0, n, _PAIR_BLOCK):
        sims = v[start : start + _PAIR_BLOCK] @ v[start:].T
        for row in range(sims.shape[0]):
            upper = sims[row, row + 1 :]
            pairs[at : at + len(upper)] = upper
            at += len(upper)
    return float(np.median(pairs, overwrite_input=True))


def normalised_drift(drift: float | np.ndarray, scale: float) -> float | np.ndarray:
    """Drift in units of ``scale`` (the index's median nearest-neighbour distance).

    Parameters
    ----------
    drift : float or np.ndarray
        Cosine drift(s), e.g. from :func:`cosine_distance`.
    scale : float
        The unit, e.g. from :func:`median_nn_distance`.

    Returns
    -------
    float or np.ndarray
        ``drift / scale``, same shape as ``drift``; NaN where ``scale`` is 0 or not finite (no unit).
    """
    if not (np.isfinite(scale) and scale > 0):
        return np.full(np.shape(drift), np.nan) if np.ndim(drift) else math.nan
    out = np.asarray(drift, dtype=np.float64) / scale
    return out if np.ndim(drift) else float(out)
