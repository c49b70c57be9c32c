"""Per-(perturbation, severity) summary of robustness rows: means, intervals, chance levels. Pure.

Each group's metrics get an interval that holds (see :mod:`eval.intervals`): Clopper-Pearson for the
proportion self@1, a studentised bootstrap over queries for means. All groups share one set of
resampled queries, so a query is one cluster across every slice and severity. Each consistency metric
also gets its chance level (:mod:`eval.chance`, from each row's own gallery size) and the
chance-corrected score ``(x - chance) / (1 - chance)``. Groups built on fewer than
:data:`SMALL_N` queries are flagged ``small_n``: read them as anecdotes, not results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from eval import chance, intervals

#: Per-query metrics that :func:`summarise` aggregates by default (the keys of a robustness row).
METRICS = ("self_at_1", "self_rank", "overlap_at_k", "jaccard_at_k", "rbo", "kendall_tau",
           "drift_cosine", "drift_l2", "drift_normalised")  # fmt: skip

#: Each metric's range: intervals are clipped to it and an all-equal sample is bounded by it.
RANGES: dict[str, tuple[float, float]] = {
    "self_at_1": (0.0, 1.0),
    "self_rank": (1.0, math.inf),
    "overlap_at_k": (0.0, 1.0),
    "jaccard_at_k": (0.0, 1.0),
    "rbo": (0.0, 1.0),
    "kendall_tau": (-1.0, 1.0),
    "drift_cosine": (0.0, 2.0),
    "drift_l2": (0.0, 2.0),
    "drift_normalised": (0.0, math.inf),
}

#: Proportions (0/1 per row): Clopper-Pearson rather than a bootstrap.
PROPORTIONS = ("self_at_1",)

#: Groups with fewer queries than this are flagged ``small_n``.
SMALL_N = 5


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v)


def _metric(members: list[dict[str, Any]], m: str, weights, order, k: int, p: float, conf: float):
    vals = [(r[m], r.get("query_id")) for r in members if _finite(r.get(m))]
    x = np.asarray([v for v, _ in vals], dtype=np.float64)
    q = [c for _, c in vals]
    out: dict[str, Any] = {}
    if members and all(r.get("identity") for r in members) and len(x):
        # Severity 0 of an array perturbation is bit-identical to the clean image: known, not estimated.
        est = intervals.Interval(
            float(x.mean()), float(x.mean()), float(x.mean()), "exact", len(x), len(set(q))
        )
    elif m in PROPORTIONS and len(x):
        n_c = len(set(q))
        # Clustered 0/1 rows (a defocus pair): the number of queries is the effective sample size.
        low, high = intervals.proportion_ci(float(x.mean()) * n_c, n_c, conf)
        method = "clopper-pearson" if n_c == len(x) else "clopper-pearson (clusters)"
        est = intervals.Interval(float(x.mean()), low, high, method, len(x), n_c)
    else:
        est = intervals.cluster_bootstrap(
            x, q, RANGES.get(m, (-math.inf, math.inf)), conf, weights=weights, cluster_order=order
        )
    out[m], out[f"{m}_low"], out[f"{m}_high"] = est.mean, est.low, est.high
    out[f"{m}_n"], out[f"{m}_method"] = est.n, est.method
    if m in chance.CHANCE_METRICS:
        key = "self_candidates" if m == "self_at_1" else "candidates"
        levels = [
            chance.chance_level(m, int(r[key]), k, p) for r in members if _finite(r.get(m)) and r.get(key)
        ]
        c = float(np.mean(levels)) if levels else None
        out[f"{m}_chance"] = c
        out[f"{m}_corrected"] = chance.corrected(est.mean, c)
        out[f"{m}_corrected_low"] = chance.corrected(est.low, c)
        out[f"{m}_corrected_high"] = chance.corrected(est.high, c)
    return out


def _sources(members: list[dict[str, Any]]) -> str:
    # What the group's rows are made of: "real", "synthetic", or a mix such as "real 20, synthetic 8".
    counts: dict[str, int] = {}
    for r in members:
        key = r.get("source") or "unknown"
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def summarise(
    rows: Sequence[dict[str, Any]],
    metrics: Sequence[str] = METRICS,
    k: int = 10,
    p: float = 0.9,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Group per-query rows by (perturbation, severity): each metric's mean, interval and chance level.

    Parameters
    ----------
    rows : sequence of dict
        One per (query, perturbation, severity[, slice]) with keys ``query_id``, ``perturbation``,
        ``severity``, optionally ``value``, ``identity`` (severity 0 of an array perturbation),
        ``candidates`` and ``self_candidates`` (gallery sizes behind the row's lists), and one key per
        metric (missing, ``None`` or NaN = no value). Rows with a ``curve`` label (``defocus_z``
        rows carry their stacks' provenance, ``real`` or ``synthetic``) form curves of their own, and
        ``source`` (the row's image provenance) is summarised per group.
    metrics : sequence of str
        The metric keys to aggregate.
    k, p : int, float
        List depth and RBO persistence, for the chance levels.
    seed : int
        Seed of the shared query resampling.
    confidence : float
        Two-sided confidence level.

    Returns
    -------
    list of dict
        One per group, sorted by perturbation, curve, then severity, with ``curve``, ``source``
        (``"real"``, ``"synthetic"``, ``"unknown"`` or a mix with counts), ``n`` (rows), ``n_queries``,
        ``small_n``, ``candidates`` (median gallery size) and, per metric ``m``: ``m``, ``m_low``,
        ``m_high``, ``m_n``, ``m_method``; for consistency metrics also ``m_chance``, ``m_corrected``,
        ``m_corrected_low``, ``m_corrected_high``. ``value`` is the rows' common ``value``, or ``None``
        when they differ (``defocus_z`` groups ``|dz|``, mixing slices above and below focus).
    """
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["perturbation"], r.get("curve") or "", r["severity"]), []).append(r)
    order = list(dict.fromkeys(r.get("query_id") for r in rows))
    weights = intervals.cluster_weights(len(order), seed=seed)
    out = []
    for (name, curve, sev), members in sorted(groups.items()):
        values = {r.get("value") for r in members}
        cands = [r["candidates"] for r in members if r.get("candidates") is not None]
        n_queries = len({r.get("query_id") for r in members})
        entry: dict[str, Any] = {
            "perturbation": name,
            "severity": sev,
            "curve": curve,
            "source": _sources(members),
            "value": values.pop() if len(values) == 1 else None,
            "n": len(members),
            "n_queries": n_queries,
            "small_n": n_queries < SMALL_N,
            "candidates": float(np.median(cands)) if cands else None,
        }
        for m in metrics:
            entry.update(_metric(members, m, weights, order, k, p, confidence))
        out.append(entry)
    return out
