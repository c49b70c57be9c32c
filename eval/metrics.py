"""Retrieval-robustness metrics. Pure: arrays and id lists in, numbers out; no I/O.

Top-k consistency compares the result ids of a clean query with those of its perturbed version.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

METRICS = ("self_at_1", "self_rank", "overlap_at_k", "jaccard_at_k", "rbo", "kendall_tau",
           "drift_cosine", "drift_l2", "drift_normalised")  # fmt: skip


def self_rank(result_ids: Sequence[int], source_id: int) -> int | None:
    """1-based rank of ``source_id`` in ``result_ids``; ``None`` when absent."""
    for i, r in enumerate(result_ids):
        if r == source_id:
            return i + 1
    return None


def self_at_1(result_ids: Sequence[int], source_id: int) -> float:
    """1.0 when the source is the first result, else 0.0."""
    return float(bool(result_ids) and result_ids[0] == source_id)


def overlap_at_k(a: Sequence[int], b: Sequence[int], k: int) -> float:
    """|a[:k] ∩ b[:k]| / k."""
    return len(set(a[:k]) & set(b[:k])) / k


def jaccard_at_k(a: Sequence[int], b: Sequence[int], k: int) -> float:
    """|a[:k] ∩ b[:k]| / |a[:k] ∪ b[:k]| (1.0 for two empty lists)."""
    sa, sb = set(a[:k]), set(b[:k])
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def rank_biased_overlap(a: Sequence[int], b: Sequence[int], p: float = 0.9, k: int | None = None) -> float:
    """Extrapolated rank-biased overlap RBO_ext (Webber, Moffat and Zobel 2010, eq. 32) of two rankings.

    For lists of equal length ``k``: ``RBO_ext = (X_k / k) p^k + (1 - p) / p * sum_{d=1..k} (X_d / d) p^d``
    where ``X_d`` is the overlap of the top-``d`` prefixes. Identical lists give exactly 1, disjoint 0.
    Lists of unequal length are cut to the shorter.
    """
    k = min(len(a), len(b)) if k is None else min(k, len(a), len(b))
    if k == 0:
        return 1.0 if not a and not b else 0.0
    if list(a[:k]) == list(b[:k]):
        return 1.0  # exact, avoiding rounding in the sum
    seen_a: set[int] = set()
    seen_b: set[int] = set()
    overlap = 0
    total = 0.0
    for d in range(1, k + 1):
        x, y = a[d - 1], b[d - 1]
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += (overlap / d) * p**d
    return float((overlap / k) * p**k + (1 - p) / p * total)


def kendall_tau_intersection(a: Sequence[int], b: Sequence[int]) -> float:
    """Kendall tau-b between the ranks, in ``a`` and in ``b``, of the items present in both.

    NaN when fewer than 2 items are shared (no pair to compare).
    """
    from scipy.stats import kendalltau

    common = [x for x in a if x in set(b)]
    if len(common) < 2:
        return float("nan")
    rank_b = {x: i for i, x in enumerate(b)}
    if sorted(common, key=rank_b.__getitem__) == common:
        return 1.0  # same order: exact, where scipy may return 0.9999999999999999
    tau = kendalltau(list(range(len(common))), [rank_b[x] for x in common]).statistic
    return float(tau)


def cosine_distance(clean: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Row-wise ``1 - cos(clean_i, perturbed_i)``."""
    c = np.atleast_2d(clean).astype(np.float64)
    q = np.atleast_2d(perturbed).astype(np.float64)
    num = (c * q).sum(1)
    den = np.linalg.norm(c, axis=1) * np.linalg.norm(q, axis=1)
    return 1.0 - num / np.where(den > 0, den, 1.0)


def l2_distance(clean: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distance."""
    return np.linalg.norm(np.atleast_2d(clean).astype(np.float64) - np.atleast_2d(perturbed), axis=1)


def median_nn_distance(vectors: np.ndarray) -> float:
    """Median over points of the cosine distance to their nearest other point (exact)."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    return float(np.median(1.0 - sims.max(axis=1)))


def normalised_drift(drift: float | np.ndarray, scale: float) -> float | np.ndarray:
    """Drift in units of the index's median nearest-neighbour distance (NaN when the scale is 0)."""
    if not scale or not np.isfinite(scale):
        return np.full_like(np.asarray(drift, dtype=float), np.nan) if np.ndim(drift) else float("nan")
    return drift / scale


def recall_at_k(approx_ids: Sequence[Sequence[int]], exact_ids: Sequence[Sequence[int]], k: int) -> float:
    """Mean over queries of |approx[:k] ∩ exact[:k]| / min(k, |exact|) (ANN recall against exact search)."""
    vals = []
    for a, e in zip(approx_ids, exact_ids):
        denom = min(k, len(e))
        if denom:
            vals.append(len(set(a[:k]) & set(e[:k])) / denom)
    return float(np.mean(vals)) if vals else float("nan")


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval (scipy), ignoring NaNs.

    Constant input gives ``(v, v, v)``; no finite value gives NaNs.
    """
    from scipy.stats import bootstrap

    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) == 1 or np.all(x == x[0]):
        return (mean, mean, mean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                        method="percentile", random_state=np.random.default_rng(seed))  # fmt: skip
    return (mean, float(res.confidence_interval.low), float(res.confidence_interval.high))


def summarise(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS, seed: int = 0
) -> list[dict[str, Any]]:
    """Group rows by (perturbation, severity) and give each metric's mean and 95 % CI.

    Returns a list of ``{"perturbation", "severity", "value", "n", "<metric>": mean,
    "<metric>_low": ..., "<metric>_high": ...}`` sorted by perturbation then severity.
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["perturbation"], r["severity"]), []).append(r)
    out = []
    for (name, sev), members in sorted(groups.items()):
        entry: dict[str, Any] = {
            "perturbation": name,
            "severity": sev,
            "value": members[0].get("value"),
            "n": len(members),
        }
        for m in metrics:
            vals = [r.get(m) for r in members]
            if m == "self_rank":
                # a source absent from the top-k has no rank: it is left out here and counted as a
                # miss by self_at_1
                vals = [v if v is not None else np.nan for v in vals]
            mean, lo, hi = bootstrap_ci(vals, seed=seed)
            entry[m], entry[f"{m}_low"], entry[f"{m}_high"] = mean, lo, hi
        out.append(entry)
    return out
