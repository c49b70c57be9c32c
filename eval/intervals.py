"""Confidence intervals that hold at the sample sizes a robustness report has (n = 5 to 100). Pure.

- **Proportions** (self@1, ANN recall@k): Clopper-Pearson, the exact binomial interval
  (:func:`proportion_ci`). It never has zero width unless the proportion is known exactly, and its
  coverage is at least the nominal level for every true proportion, including near 0 or 1 where a
  bootstrap of 0/1 values collapses to a point (28 hits out of 28 gave [1.000, 1.000]; the exact lower
  bound is 0.877).
- **Means** (overlap, RBO, drift): a studentised bootstrap over *clusters* (:func:`cluster_bootstrap`):
  the unit resampled is the query, with all its rows (both z-slices of a defocus pair, every severity),
  because rows of one query are not independent. Studentised rather than percentile: at n = 20 the
  percentile interval of a skewed mean covers 0.86-0.90 of the time at nominal 0.95; the studentised one
  0.93-0.96 (``tests/eval/test_intervals.py`` checks this by simulation).
- **A sample whose values are all equal** gets :func:`all_equal_bound`, an interval that follows from
  the metric's range alone, never zero width (a bootstrap would return a single point).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Resamples of :func:`cluster_bootstrap`.
N_RESAMPLES = 2000


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(confidence)


def proportion_ci(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of a proportion.

    Parameters
    ----------
    successes : float
        Number of successes, ``0 <= successes <= n``. A non-integer count is allowed: with clustered
        rows pass the effective count ``mean * n_clusters`` (the beta quantiles are continuous in it).
    n : float
        Number of independent trials (> 0), e.g. the number of queries.
    confidence : float
        Two-sided confidence level in (0, 1).

    Returns
    -------
    tuple of float
        ``(low, high)``; ``low = 0`` when there is no success and ``high = 1`` when all succeed. NaNs when
        ``n`` is 0.

    Raises
    ------
    ValueError
        If ``successes`` is outside ``[0, n]`` or ``confidence`` outside (0, 1).
    """
    from scipy.stats import beta

    alpha = 1 - _check_confidence(confidence)
    if n <= 0:
        return (math.nan, math.nan)
    if not -1e-9 <= successes <= n + 1e-9:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    x = min(max(float(successes), 0.0), float(n))
    low = 0.0 if x <= 0 else float(beta.ppf(alpha / 2, x, n - x + 1))
    high = 1.0 if x >= n else float(beta.ppf(1 - alpha / 2, x + 1, n - x))
    return (low, high)


def all_equal_bound(
    value: float, n: int, lower: float, upper: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval of the mean when all ``n`` observed values equal ``value``, from the range alone.

    If the true mean were more than ``delta`` below ``value``, at least a share
    ``delta / (value - lower)`` of the population would lie below ``value``, so ``n`` draws would all
    equal ``value`` with probability at most ``(1 - delta / (value - lower)) ** n``. Setting that to
    ``alpha / 2`` gives the lower bound, and the same on the other side. For a 0/1 metric at 1 this is
    exactly the Clopper-Pearson bound ``(alpha / 2) ** (1 / n)``.

    Parameters
    ----------
    value : float
        The common value.
    n : int
        How many (independent) values were observed.
    lower, upper : float
        The metric's range (``-inf``/``inf`` allowed: that side is then unbounded).
    confidence : float
        Two-sided confidence level.

    Returns
    -------
    tuple of float
        ``(low, high)``, with ``low == value`` only when ``value == lower`` (and likewise above).
    """
    alpha = 1 - _check_confidence(confidence)
    if n < 1:
        return (math.nan, math.nan)
    shrink = 1 - (alpha / 2) ** (1 / n)
    return (float(value - (value - lower) * shrink), float(value + (upper - value) * shrink))


@dataclass(frozen=True)
class Interval:
    """A mean with its interval, how it was computed, and how many values and clusters are behind it."""

    mean: float
    low: float
    high: float
    method: str
    n: int
    clusters: int


def cluster_weights(n_clusters: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap weights: how often each cluster is drawn in each resample (``(n_resamples, n_clusters)``).

    Drawing them once per report and passing the same matrix to every group makes the intervals of
    all severities and slices come from the same resampled query sets.
    """
    rng = np.random.default_rng(seed)
    if n_clusters == 0:
        return np.zeros((n_resamples, 0))
    return rng.multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters), size=n_resamples).astype(float)


def _ratio_and_se(
    weights: np.ndarray, totals: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # Ratio estimator of a clustered mean and its linearised standard error (the usual survey formula):
    # with one row per cluster it is the sample mean and s / sqrt(n).
    w = np.atleast_2d(weights)
    wm = w @ sizes
    ok = wm > 0
    r = np.where(ok, (w @ totals) / np.where(ok, wm, 1), np.nan)
    nc = w.sum(axis=1)
    resid = totals[None, :] - r[:, None] * sizes[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = nc / (nc - 1) * (w * resid**2).sum(axis=1) / wm**2
    return r, np.sqrt(np.where((nc > 1) & ok, var, np.nan))


def cluster_bootstrap(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object] | np.ndarray,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    confidence: float = 0.95,
    weights: np.ndarray | None = None,
    cluster_order: Sequence[object] | None = None,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> Interval:
    """Mean of ``values`` and a studentised bootstrap interval that resamples whole clusters.

    Parameters
    ----------
    values : sequence of float
        One value per row; NaN rows are dropped.
    clusters : sequence
        The cluster (query id) of each row.
    bounds : tuple of float
        The metric's range; the interval is clipped to it, and an all-equal sample gets
        :func:`all_equal_bound`.
    confidence : float
        Two-sided confidence level.
    weights : np.ndarray, optional
        A ``(resamples, len(cluster_order))`` matrix from :func:`cluster_weights`, shared across groups.
    cluster_order : sequence, optional
        The cluster labels that the columns of ``weights`` stand for (required with ``weights``).
    seed : int
        Seed of the resampling when ``weights`` is not given.
    n_resamples : int
        Resamples when ``weights`` is not given.

    Returns
    -------
    Interval
        ``method`` is ``"cluster-bootstrap-t"``, ``"all-equal-bound"`` or ``"none"`` (no finite value).
    """
    alpha = 1 - _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    c = np.asarray(list(clusters), dtype=object)
    if len(x) != len(c):
        raise ValueError(f"{len(x)} values but {len(c)} cluster labels")
    keep = np.isfinite(x)
    x, c = x[keep], c[keep]
    if not len(x):
        return Interval(math.nan, math.nan, math.nan, "none", 0, 0)
    labels = list(dict.fromkeys(c.tolist())) if cluster_order is None else list(cluster_order)
    col = {lab: i for i, lab in enumerate(labels)}
    present = sorted({col[v] for v in c.tolist()})
    totals = np.zeros(len(labels))
    sizes = np.zeros(len(labels))
    np.add.at(totals, [col[v] for v in c.tolist()], x)
    np.add.at(sizes, [col[v] for v in c.tolist()], 1.0)
    totals, sizes = totals[present], sizes[present]
    n_clusters = len(present)
    mean = float(x.sum() / len(x))
    if np.all(x == x[0]):
        low, high = all_equal_bound(float(x[0]), n_clusters, *bounds, confidence=confidence)
        return Interval(mean, low, high, "all-equal-bound", len(x), n_clusters)
    if weights is None:
        w = cluster_weights(n_clusters, n_resamples, seed)
    else:
        w = np.asarray(weights)[:, present]
    r0, se0 = _ratio_and_se(np.ones(n_clusters), totals, sizes)
    rb, seb = _ratio_and_se(w, totals, sizes)
    # A resample that drew only equal values (likely when most queries score 0, as at a severe
    # perturbation) has zero spread and an infinite t, which would stretch the interval to the whole
    # range. Such a resample gets the standard error se0 / sqrt(n) instead: its t stays large but
    # finite. Resamples with spread are left alone (any floor there would shift every quantile).
    if np.isfinite(se0[0]):
        seb = np.where(seb > 0, seb, se0[0] / math.sqrt(n_clusters))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (rb - r0[0]) / seb
    # A resample with zero spread (all drawn values equal) has t = +-inf unless it hits the mean; keep
    # it as an extreme rather than dropping it, which would narrow the interval.
    t = np.where(np.isnan(t) & (rb == r0[0]), 0.0, t)
    t = np.sort(t[~np.isnan(t)])
    if not len(t) or not np.isfinite(se0[0]):
        low, high = bounds
    else:
        q_hi = t[min(len(t) - 1, int(math.floor((1 - alpha / 2) * len(t))))]
        q_lo = t[max(0, int(math.ceil(alpha / 2 * len(t))) - 1)]
        low, high = r0[0] - q_hi * se0[0], r0[0] - q_lo * se0[0]
    low = float(np.clip(low, *bounds)) if not np.isnan(low) else bounds[0]
    high = float(np.clip(high, *bounds)) if not np.isnan(high) else bounds[1]
    return Interval(mean, low, high, "cluster-bootstrap-t", len(x), n_clusters)
