import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eval import metrics as m


def test_self_rank_and_self_at_1():
    assert m.self_rank([5, 7, 9], 7) == 2 and m.self_rank([5], 7) is None
    assert m.self_at_1([7, 5], 7) == 1.0 and m.self_at_1([5, 7], 7) == 0.0 and m.self_at_1([], 7) == 0.0


def test_overlap_and_jaccard_by_hand():
    a, b = [1, 2, 3, 4], [2, 1, 5, 6]
    assert m.overlap_at_k(a, b, 4) == 0.5  # {1, 2} shared of 4
    assert m.jaccard_at_k(a, b, 4) == 2 / 6  # union {1..6}
    assert m.overlap_at_k(a, b, 1) == 0.0 and m.overlap_at_k(a, b, 2) == 1.0


def _rbo_reference(a, b, p):
    # Direct transcription of eq. 32 of Webber et al. (2010), independent of the implementation.
    k = len(a)
    x = [len(set(a[:d]) & set(b[:d])) for d in range(1, k + 1)]
    return x[-1] / k * p**k + (1 - p) / p * sum(x[d - 1] / d * p**d for d in range(1, k + 1))


def test_rbo_identical_disjoint_and_reference():
    assert m.rank_biased_overlap([1, 2, 3], [1, 2, 3]) == 1.0
    assert m.rank_biased_overlap([1, 2, 3], [4, 5, 6]) == 0.0
    # Swapping the first two of three: X = 0, 2, 3 -> 3/3 * .9^3 + (.1/.9) * (0 + 2/2*.81 + 3/3*.729)
    expected = 0.729 + (0.1 / 0.9) * (0.81 + 0.729)
    assert m.rank_biased_overlap([1, 2, 3], [2, 1, 3], p=0.9) == pytest.approx(expected, abs=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = list(rng.permutation(20)[:10])
        b = list(rng.permutation(20)[:10])
        assert m.rank_biased_overlap(a, b, p=0.8) == pytest.approx(_rbo_reference(a, b, 0.8), abs=1e-12)


@given(st.lists(st.integers(0, 30), min_size=1, max_size=12, unique=True),
       st.lists(st.integers(0, 30), min_size=1, max_size=12, unique=True))  # fmt: skip
def test_rbo_properties(a, b):
    k = min(len(a), len(b))
    r = m.rank_biased_overlap(a[:k], b[:k])
    assert 0.0 <= r <= 1.0 + 1e-12
    assert r == pytest.approx(m.rank_biased_overlap(b[:k], a[:k]), abs=1e-12)
    assert 0.0 <= m.overlap_at_k(a, b, k) <= 1.0


def test_kendall_tau_on_intersection():
    assert m.kendall_tau_intersection([1, 2, 3], [1, 2, 3]) == 1.0
    assert m.kendall_tau_intersection([1, 2, 3], [3, 2, 1]) == -1.0
    # shared items 1, 2, 3 ordered (1,2,3) vs (2,1,3): 2 concordant, 1 discordant of 3 pairs -> 1/3
    assert m.kendall_tau_intersection([1, 9, 2, 3], [2, 1, 8, 3]) == pytest.approx(1 / 3)
    assert math.isnan(m.kendall_tau_intersection([1, 2], [2, 5]))


def test_drift_against_sklearn_and_brute_force():
    from sklearn.metrics.pairwise import cosine_distances

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    np.testing.assert_allclose(m.cosine_distance(a, b), np.diag(cosine_distances(a, b)), atol=1e-12)
    np.testing.assert_allclose(m.l2_distance(a, b), [np.linalg.norm(x - y) for x, y in zip(a, b)])
    v = rng.normal(size=(30, 5))
    d = cosine_distances(v)
    np.fill_diagonal(d, np.inf)
    assert m.median_nn_distance(v) == pytest.approx(float(np.median(d.min(1))), abs=1e-12)
    assert m.normalised_drift(0.2, 0.1) == pytest.approx(2.0)
    assert math.isnan(m.normalised_drift(0.2, 0.0))


def test_recall_at_k():
    assert m.recall_at_k([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 5, 6]], 3) == pytest.approx((2 / 3 + 1) / 2)
    assert m.recall_at_k([[1]], [[1]], 10) == 1.0  # fewer exact results than k


def test_bootstrap_ci():
    mean, lo, hi = m.bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0] * 4, seed=0)
    assert mean == 3.0 and lo < 3.0 < hi and lo >= 1.0 and hi <= 5.0
    assert m.bootstrap_ci([0.5] * 5) == (0.5, 0.5, 0.5)
    assert all(math.isnan(x) for x in m.bootstrap_ci([float("nan"), None]))
    assert m.bootstrap_ci([1.0, 2.0, 3.0], seed=3) == m.bootstrap_ci([1.0, 2.0, 3.0], seed=3)


def test_summarise_groups_and_identity_level():
    rows = [
        {"perturbation": "blur", "severity": 0, "value": 0.0, "self_at_1": 1.0, "rbo": 1.0},
        {"perturbation": "blur", "severity": 0, "value": 0.0, "self_at_1": 1.0, "rbo": 1.0},
        {"perturbation": "blur", "severity": 3, "value": 2.0, "self_at_1": 0.0, "rbo": 0.5},
        {"perturbation": "blur", "severity": 3, "value": 2.0, "self_at_1": 1.0, "rbo": 0.7},
    ]
    s = m.summarise(rows, metrics=("self_at_1", "rbo"))
    assert [(e["severity"], e["n"]) for e in s] == [(0, 2), (3, 2)]
    assert s[0]["self_at_1"] == 1.0 and s[0]["rbo_low"] == 1.0
    assert s[1]["rbo"] == pytest.approx(0.6)
