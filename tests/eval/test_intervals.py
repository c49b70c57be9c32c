"""Intervals that hold: coverage checked by simulation, degenerate samples never read as certain."""

import math

import numpy as np
import pytest

from eval import intervals


def test_clopper_pearson_by_hand():
    assert intervals.proportion_ci(28, 28) == pytest.approx((0.025 ** (1 / 28), 1.0))
    assert intervals.proportion_ci(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    lo, hi = intervals.proportion_ci(7, 10)  # R: binom.test(7, 10)$conf.int
    assert lo == pytest.approx(0.3475, abs=1e-4) and hi == pytest.approx(0.9333, abs=1e-4)
    assert all(math.isnan(x) for x in intervals.proportion_ci(0, 0))
    with pytest.raises(ValueError):
        intervals.proportion_ci(11, 10)


def test_all_equal_bound():
    assert intervals.all_equal_bound(1.0, 28, 0.0, 1.0) == pytest.approx((0.025 ** (1 / 28), 1.0))
    lo, hi = intervals.all_equal_bound(0.5, 10, 0.0, 1.0)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)
    assert intervals.all_equal_bound(0.0, 5, 0.0, math.inf) == (0.0, math.inf)


def _coverage(draw, truth, reps, method):
    hits = 0
    for r in range(reps):
        x = draw(r)
        if method == "cp":
            lo, hi = intervals.proportion_ci(x.sum(), len(x))
        else:
            est = intervals.cluster_bootstrap(x, range(len(x)), (0.0, math.inf), seed=r, n_resamples=999)
            lo, hi = est.low, est.high
        hits += lo <= truth <= hi
    return hits / reps


def test_coverage_at_n_20():
    # Nominal 0.95, n = 20 queries: the intervals must cover at least 0.93 of the time.
    rng = np.random.default_rng(0)
    draws = [rng.random(20) < 0.97 for _ in range(1000)]
    cp = _coverage(lambda r: draws[r].astype(float), 0.97, 1000, "cp")
    skewed = [rng.beta(0.5, 4.0, 20) for _ in range(600)]  # skewness 1.6, like a drift distribution
    boot = _coverage(lambda r: skewed[r], 0.5 / 4.5, 600, "boot")
    expo = [rng.exponential(1.0, 20) for _ in range(600)]
    boot_exp = _coverage(lambda r: expo[r], 1.0, 600, "boot")
    print(
        f"coverage: proportion p=0.97 {cp:.3f}, beta(0.5,4) mean {boot:.3f}, exponential mean {boot_exp:.3f}"
    )
    assert cp >= 0.93 and boot >= 0.93 and boot_exp >= 0.93


def test_cluster_bootstrap_basics():
    est = intervals.cluster_bootstrap([1.0, 2.0, 3.0, 4.0, 5.0] * 4, range(20), seed=0)
    assert est.mean == 3.0 and 1.0 <= est.low < 3.0 < est.high <= 5.0 and est.method == "cluster-bootstrap-t"
    est = intervals.cluster_bootstrap([0.5, float("nan"), 0.5], [1, 2, 3], (0.0, 1.0))
    assert est.n == 2 and est.low < 0.5 < est.high and est.method == "all-equal-bound"
    assert intervals.cluster_bootstrap([], []).method == "none"
    a = intervals.cluster_bootstrap([0.1, 0.4, 0.35, 0.8], [1, 2, 3, 4], seed=3)
    assert a == intervals.cluster_bootstrap([0.1, 0.4, 0.35, 0.8], [1, 2, 3, 4], seed=3)
    # 400 draws of N(10, 2): about mean +- 1.96 s / sqrt(n)
    x = np.random.default_rng(6).normal(10, 2, 400)
    est = intervals.cluster_bootstrap(x, range(400), seed=1)
    half = 1.96 * x.std(ddof=1) / math.sqrt(400)
    assert est.low == pytest.approx(x.mean() - half, abs=0.03) and est.high == pytest.approx(
        x.mean() + half, abs=0.03
    )


def test_mostly_zero_scores_keep_a_finite_interval():
    # At a severe perturbation most queries score 0: resamples of only zeros have no spread, and a plain
    # bootstrap-t would stretch the interval to [0, 1]. Two hits of 0.3 and 0.4 among 28 queries:
    x = np.zeros(28)
    x[[3, 9]] = [0.3, 0.4]
    est = intervals.cluster_bootstrap(x, range(28), (0.0, 1.0))
    assert est.low == 0.0 and 0.05 < est.high < 0.2
