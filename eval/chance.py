"""Chance levels of the top-k consistency metrics, exactly. Pure.

A consistency score means little without its floor: on a gallery of 30 images two *random* top-10
lists already share a third of their items. Each function here gives the expected value of a metric
when the clean and the perturbed lists are independent uniformly random top-k lists drawn from the
same gallery of ``g`` candidates (no item repeated within a list), which is what a model that has
forgotten everything about the query would score.

With ``X_d`` the overlap of the two depth-``d`` prefixes, ``X_d`` is hypergeometric: ``d`` draws from
``g`` items of which ``d`` are marked, so ``E[X_d] = d**2 / g``. Every metric below is either linear in
the ``X_d`` (overlap, RBO), a function of ``X_k`` alone (Jaccard), or symmetric under reordering
(Kendall tau), which makes each expectation a short exact sum.
"""

from __future__ import annotations

import math

#: Metrics for which :func:`chance_level` has a value (drift has no chance level: it is not a score).
CHANCE_METRICS = ("self_at_1", "overlap_at_k", "jaccard_at_k", "rbo", "kendall_tau")


def _check(g: int, k: int) -> tuple[int, int]:
    if k < 1 or g < 1:
        raise ValueError(f"gallery size and k must be >= 1, got g={g}, k={k}")
    return int(g), int(min(k, g))


def overlap(g: int, k: int) -> float:
    """Expected ``overlap@k`` of two random top-k lists from ``g`` candidates: ``k / g`` (1 when k >= g)."""
    g, k = _check(g, k)
    return k / g


def _hypergeom_pmf(g: int, k: int) -> list[float]:
    # P(X_k = x), x = 0..k: k draws without replacement from g items of which k are marked.
    total = math.comb(g, k)
    return [math.comb(k, x) * math.comb(g - k, k - x) / total for x in range(k + 1)]


def jaccard(g: int, k: int) -> float:
    """Expected Jaccard of two random top-k sets from ``g`` candidates: ``E[X / (2k - X)]``, exact."""
    g, k = _check(g, k)
    return float(sum(p * x / (2 * k - x) for x, p in enumerate(_hypergeom_pmf(g, k))))


def rbo(g: int, k: int, p: float = 0.9) -> float:
    """Expected RBO_ext (as :func:`eval.metrics.rank_biased_overlap`) of two random top-k rankings.

    RBO_ext is linear in the prefix overlaps, so its expectation substitutes ``E[X_d] = d**2 / g``::

        E = (k / g) * p**k + (1 - p) / p * sum_{d=1..k} (d / g) * p**d
    """
    g, k = _check(g, k)
    if not 0 < p < 1:
        raise ValueError(f"RBO persistence p must be in (0, 1), got {p}")
    return float(k / g * p**k + (1 - p) / p * sum(d / g * p**d for d in range(1, k + 1)))


def kendall_tau(g: int, k: int) -> float:
    """Expected Kendall tau of the shared items of two random rankings: 0.

    Given which items are shared, every relative order of them is equally likely, and tau of an order
    and its reverse cancel. Undefined lists (fewer than two shared items) are dropped, as in the report.
    """
    _check(g, k)
    return 0.0


def self_at_1(g: int) -> float:
    """Chance that the source image comes first among ``g`` candidates (itself included): ``1 / g``."""
    if g < 1:
        raise ValueError(f"gallery size must be >= 1, got {g}")
    return 1.0 / g


def chance_level(metric: str, g: int, k: int, p: float = 0.9) -> float | None:
    """Expected value of ``metric`` for random top-k lists from a gallery of ``g`` candidates.

    Parameters
    ----------
    metric : str
        A robustness row key; ``self_at_1`` takes ``g`` as the self-retrieval gallery (source included).
    g : int
        Candidates the lists were drawn from.
    k : int
        List depth.
    p : float
        RBO persistence.

    Returns
    -------
    float or None
        The chance level, or ``None`` for metrics that have none (drift, self_rank).
    """
    if metric == "self_at_1":
        return self_at_1(g)
    if metric == "overlap_at_k":
        return overlap(g, k)
    if metric == "jaccard_at_k":
        return jaccard(g, k)
    if metric == "rbo":
        return rbo(g, k, p)
    if metric == "kendall_tau":
        return kendall_tau(g, k)
    return None


def corrected(x: float | None, chance: float | None) -> float | None:
    """Chance-corrected score ``(x - chance) / (1 - chance)``: 0 at chance, 1 at perfect agreement.

    ``None`` when either is missing or the chance level is 1 (a gallery no bigger than k: nothing to
    correct against).
    """
    if x is None or chance is None or not math.isfinite(x) or not math.isfinite(chance) or chance >= 1:
        return None
    return (x - chance) / (1 - chance)
