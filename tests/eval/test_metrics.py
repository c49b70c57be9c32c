"""Metrics against hand-worked cases and independent implementations (scikit-learn, brute force, the
formulas of the papers written out directly)."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval import metrics as m

rankings = st.lists(st.integers(0, 30), min_size=0, max_size=12, unique=True)


# --- self-retrieval ------------------------------------------------------------------------------------


def test_self_rank_and_self_at_1():
    assert m.self_rank([5, 7, 9], 7) == 2 and m.self_rank([5, 7, 9], 5) == 1 and m.self_rank([5], 7) is None
    assert m.self_rank([], 7) is None and m.self_rank(np.array([3, 4, 7]), 7) == 3
    assert m.self_at_1([7, 5], 7) == 1.0 and m.self_at_1([5, 7], 7) == 0.0 and m.self_at_1([], 7) == 0.0
    assert m.self_at_1(np.array([7, 5]), 7) == 1.0  # an array of ids, not only lists


# --- overlap and Jaccard -------------------------------------------------------------------------------


def test_overlap_and_jaccard_by_hand():
    a, b = [1, 2, 3, 4], [2, 1, 5, 6]
    assert m.overlap_at_k(a, b, 4) == 0.5  # {1, 2} shared of 4
    assert m.jaccard_at_k(a, b, 4) == 2 / 6  # union {1, 2, 3, 4, 5, 6}
    assert m.overlap_at_k(a, b, 1) == 0.0 and m.overlap_at_k(a, b, 2) == 1.0  # {1} vs {2}; {1,2} vs {2,1}
    assert m.jaccard_at_k(a, b, 3) == 2 / 4  # {1,2,3} vs {2,1,5}: 2 shared of {1,2,3,5}
    assert m.overlap_at_k(np.array(a), np.array(b), 4) == 0.5


def test_short_lists():
    # fewer results than k (small index, filter): divide by the longer cut list, so identical = 1
    assert m.overlap_at_k([1, 2, 3], [1, 2, 3], 10) == 1.0
    assert m.overlap_at_k([1, 2, 3], [1, 2], 10) == 2 / 3
    assert m.overlap_at_k([], [], 5) == 1.0 and m.jaccard_at_k([], [], 5) == 1.0
    assert m.overlap_at_k([1], [], 5) == 0.0
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            m.overlap_at_k([1], [1], bad)
        with pytest.raises(ValueError, match="k must be"):
            m.jaccard_at_k([1], [1], bad)


@given(rankings, rankings, st.integers(1, 15))
def test_overlap_jaccard_properties(a, b, k):
    o, j = m.overlap_at_k(a, b, k), m.jaccard_at_k(a, b, k)
    assert 0.0 <= j <= o <= 1.0  # |A ∩ B| / |A ∪ B| <= |A ∩ B| / max(|A|, |B|)
    assert o == m.overlap_at_k(b, a, k) and j == m.jaccard_at_k(b, a, k)
    assert m.overlap_at_k(a, a, k) == 1.0 and m.jaccard_at_k(a, a, k) == 1.0
    if len(a) >= k and len(b) >= k:  # full lists: exactly the textbook |a[:k] ∩ b[:k]| / k
        assert o == len(set(a[:k]) & set(b[:k])) / k


# --- rank-biased overlap -------------------------------------------------------------------------------


def _rbo_ext_reference(a, b, p):
    # Webber, Moffat and Zobel (2010), eq. 32 with s = l = k (equal lengths), written out directly:
    # RBO_ext = X_k / k * p^k + (1 - p) / p * sum_{d=1}^{k} X_d / d * p^d, X_d = |a[:d] ∩ b[:d]|.
    k = len(a)
    x = [len(set(a[:d]) & set(b[:d])) for d in range(1, k + 1)]
    return x[-1] / k * p**k + (1 - p) / p * sum(x[d - 1] / d * p**d for d in range(1, k + 1))


def test_rbo_by_hand():
    assert m.rank_biased_overlap([1, 2, 3], [1, 2, 3]) == 1.0
    assert m.rank_biased_overlap([1, 2, 3], [4, 5, 6]) == 0.0
    # Swap the first two of three, p = 0.9: X = 0, 2, 3
    #   3/3 * 0.9^3 + (0.1 / 0.9) * (0/1 * 0.9 + 2/2 * 0.81 + 3/3 * 0.729) = 0.729 + 0.1710 = 0.9
    expected = 0.729 + (0.1 / 0.9) * (0.81 + 0.729)
    assert expected == pytest.approx(0.9, abs=1e-12)
    assert m.rank_biased_overlap([1, 2, 3], [2, 1, 3], p=0.9) == pytest.approx(expected, abs=1e-12)
    # Same sets, reversed, p = 0.5: {1} vs {3}, {1,2} vs {3,2}, all -> X = 0, 1, 3
    #   3/3 * 0.125 + (0.5 / 0.5) * (0 + 1/2 * 0.25 + 3/3 * 0.125) = 0.125 + 0.125 + 0.125 = 0.375
    assert m.rank_biased_overlap([1, 2, 3], [3, 2, 1], p=0.5) == pytest.approx(0.375, abs=1e-12)
    # One shared item at the top, p = 0.5, k = 2: X = 1, 1 -> 1/2 * 0.25 + 1 * (0.5 + 0.125) = 0.75
    assert m.rank_biased_overlap([1, 2], [1, 3], p=0.5) == pytest.approx(0.75, abs=1e-12)


def test_rbo_against_reference_and_truncation():
    rng = np.random.default_rng(0)
    for p in (0.5, 0.8, 0.9, 0.98):
        for _ in range(30):
            a = rng.permutation(20)[:10].tolist()
            b = rng.permutation(20)[:10].tolist()
            assert m.rank_biased_overlap(a, b, p=p) == pytest.approx(_rbo_ext_reference(a, b, p), abs=1e-12)
            # k cuts both lists; unequal lengths are cut to the shorter
            assert m.rank_biased_overlap(a, b, p=p, k=4) == pytest.approx(
                _rbo_ext_reference(a[:4], b[:4], p), abs=1e-12
            )
            assert m.rank_biased_overlap(a, b[:6], p=p) == pytest.approx(
                _rbo_ext_reference(a[:6], b[:6], p), abs=1e-12
            )
    assert m.rank_biased_overlap(np.array([3, 1, 2]), np.array([3, 1, 2])) == 1.0
    assert m.rank_biased_overlap([], []) == 1.0 and m.rank_biased_overlap([1], []) == 0.0


def test_rbo_errors():
    for p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="p must be in"):
            m.rank_biased_overlap([1], [1], p=p)
    with pytest.raises(ValueError, match="repeated"):
        m.rank_biased_overlap([1, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="k must be"):
        m.rank_biased_overlap([1], [1], k=0)


@settings(max_examples=200)
@given(rankings, rankings, st.floats(0.05, 0.95))
def test_rbo_properties(a, b, p):
    k = min(len(a), len(b))
    a, b = a[:k], b[:k]
    r = m.rank_biased_overlap(a, b, p=p)
    assert 0.0 <= r <= 1.0 + 1e-12
    assert r == pytest.approx(m.rank_biased_overlap(b, a, p=p), abs=1e-12)  # symmetric
    assert m.rank_biased_overlap(a, a, p=p) == 1.0  # exactly, for any p
    if k and not set(a) & set(b):
        assert r == 0.0
    if k:
        assert r == pytest.approx(_rbo_ext_reference(a, b, p), abs=1e-12)


# --- Kendall tau on the intersection -------------------------------------------------------------------


def _tau_brute(a, b):
    # Kendall tau-a by counting pairs; positions have no ties, so tau-b = tau-a.
    pos_b = {x: i for i, x in enumerate(b)}
    common = [x for x in a if x in pos_b]
    c = d = 0
    for (i, x), (j, y) in itertools.combinations(enumerate(common), 2):
        s = (j - i) * (pos_b[y] - pos_b[x])
        c, d = c + (s > 0), d + (s < 0)
    return (c - d) / (len(common) * (len(common) - 1) / 2)


def test_kendall_tau_by_hand():
    assert m.kendall_tau_intersection([1, 2, 3], [1, 2, 3]) == 1.0
    assert m.kendall_tau_intersection([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0, abs=1e-12)
    # shared items 1, 2, 3 ordered (1, 2, 3) in a and (2, 1, 3) in b: pairs (1,2) discordant,
    # (1,3) and (2,3) concordant -> (2 - 1) / 3
    assert m.kendall_tau_intersection([1, 9, 2, 3], [2, 1, 8, 3]) == pytest.approx(1 / 3, abs=1e-12)
    # the same order with other items in between is still exactly 1
    assert m.kendall_tau_intersection([1, 7, 2, 8, 3], [9, 1, 2, 3]) == 1.0
    # fewer than two shared items: no pair to compare -> NaN
    assert math.isnan(m.kendall_tau_intersection([1, 2], [2, 5]))
    assert math.isnan(m.kendall_tau_intersection([], []))


def test_kendall_tau_against_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(100):
        a = rng.permutation(15)[:10].tolist()
        b = rng.permutation(15)[:10].tolist()
        assert m.kendall_tau_intersection(a, b) == pytest.approx(_tau_brute(a, b), abs=1e-12)


@given(rankings, rankings)
def test_kendall_tau_properties(a, b):
    t = m.kendall_tau_intersection(a, b)
    if len(set(a) & set(b)) < 2:
        assert math.isnan(t)
    else:
        assert -1.0 - 1e-12 <= t <= 1.0 + 1e-12
        assert t == pytest.approx(m.kendall_tau_intersection(b, a), abs=1e-12)
    if len(a) >= 2:
        assert m.kendall_tau_intersection(a, a) == 1.0


def test_severity_0_reads_exactly_one():
    # identical result lists (an unperturbed query): every consistency metric is exactly 1
    rng = np.random.default_rng(11)
    for _ in range(20):
        ids = rng.choice(10**12, 10, replace=False).tolist()
        assert m.self_at_1(ids, ids[0]) == 1.0
        assert m.overlap_at_k(ids, ids, 10) == 1.0 and m.jaccard_at_k(ids, ids, 10) == 1.0
        assert m.rank_biased_overlap(ids, ids, p=0.9) == 1.0 and m.kendall_tau_intersection(ids, ids) == 1.0
        v = rng.normal(size=(3, 64)).astype(np.float32)
        assert np.array_equal(m.cosine_distance(v, v), np.zeros(3))
        assert np.array_equal(m.l2_distance(v, v), np.zeros(3))


# --- embedding drift -----------------------------------------------------------------------------------


def test_drift_by_hand():
    # (1, 0) vs (0, 2): orthogonal -> 1; (1, 1) vs (-1, -1): opposite -> 2; (3, 4) vs (6, 8): same -> 0
    clean = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    pert = np.array([[0.0, 2.0], [-1.0, -1.0], [6.0, 8.0]])
    np.testing.assert_allclose(m.cosine_distance(clean, pert), [1.0, 2.0, 0.0], atol=1e-15)
    # L2: sqrt(1 + 4), sqrt(4 + 4), sqrt(9 + 16)
    np.testing.assert_allclose(m.l2_distance(clean, pert), [math.sqrt(5), math.sqrt(8), 5.0])
    assert m.cosine_distance([1.0, 0.0], [0.0, 1.0]).tolist() == [1.0]  # single vectors
    # a zero vector has cosine 0 with anything: distance 1, as in scikit-learn
    assert m.cosine_distance([[0.0, 0.0]], [[1.0, 2.0]]).tolist() == [1.0]
    with pytest.raises(ValueError, match="matching"):
        m.cosine_distance(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="matching"):
        m.l2_distance(np.zeros((2, 3)), np.zeros((2, 4)))


def test_drift_against_sklearn():
    from sklearn.metrics.pairwise import cosine_distances, euclidean_distances

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 16)), rng.normal(size=(40, 16))
    b[:5] = a[:5] + 1e-3 * rng.normal(size=(5, 16))  # near-identical rows too
    np.testing.assert_allclose(m.cosine_distance(a, b), np.diag(cosine_distances(a, b)), atol=1e-12)
    np.testing.assert_allclose(m.l2_distance(a, b), np.diag(euclidean_distances(a, b)), atol=1e-12)
    f32 = a.astype(np.float32)  # encoders emit float32: computed in float64
    assert m.cosine_distance(f32, b).dtype == np.float64


def test_median_nn_distance_against_brute_force_and_sklearn(monkeypatch):
    from sklearn.metrics.pairwise import cosine_distances
    from sklearn.neighbors import NearestNeighbors

    # by hand: unit vectors at 0, 10 and 90 degrees -> NN distances 1 - cos 10, 1 - cos 10, 1 - cos 80
    deg = np.deg2rad([0.0, 10.0, 90.0])
    v = np.stack([np.cos(deg), np.sin(deg)], axis=1) * [[1.0], [3.0], [0.5]]  # lengths do not matter
    assert m.median_nn_distance(v) == pytest.approx(1 - math.cos(math.radians(10)), abs=1e-12)

    rng = np.random.default_rng(2)
    x = rng.normal(size=(57, 6))
    d = cosine_distances(x)
    np.fill_diagonal(d, np.inf)
    brute = float(np.median(d.min(axis=1)))
    nn = NearestNeighbors(n_neighbors=2, metric="cosine", algorithm="brute").fit(x)
    sk = float(np.median(nn.kneighbors(x)[0][:, 1]))
    assert m.median_nn_distance(x) == pytest.approx(brute, abs=1e-12) == pytest.approx(sk, abs=1e-12)
    monkeypatch.setattr(m, "_NN_BLOCK", 7)  # the blocked path (57 = 8 blocks of 7 + 1) gives the same
    assert m.median_nn_distance(x) == pytest.approx(brute, abs=1e-12)
    # an exact duplicate is a neighbour at distance 0, but a point is never its own neighbour
    assert m.median_nn_distance(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])) == 0.0
    for bad in (np.zeros((1, 3)), np.zeros(3)):
        with pytest.raises(ValueError, match="n >= 2"):
            m.median_nn_distance(bad)


def test_normalised_drift():
    assert m.normalised_drift(0.2, 0.1) == pytest.approx(2.0)
    np.testing.assert_allclose(m.normalised_drift(np.array([0.0, 0.05, 0.3]), 0.1), [0.0, 0.5, 3.0])
    assert math.isnan(m.normalised_drift(0.2, 0.0)) and math.isnan(m.normalised_drift(0.2, float("nan")))
    assert np.isnan(m.normalised_drift(np.array([0.1, 0.2]), 0.0)).all()


def test_median_pairwise_cosine():
    v = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # pairs: 0, 1/sqrt(2), 1/sqrt(2)
    assert m.median_pairwise_cosine(v) == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(ValueError):
        m.median_pairwise_cosine(v[:1])


def test_median_pairwise_cosine_needs_no_n_by_n_matrix():
    """mae-eval calls it on a 2,000-vector sample of any index: the n x n matrix and its triu_indices
    were ~80 MB of the eval's peak. The pairs alone are n (n - 1) / 2 floats (16 MB here)."""
    import tracemalloc

    v = np.random.default_rng(0).normal(size=(2000, 32))
    w = v / np.linalg.norm(v, axis=1, keepdims=True)
    expected = float(np.median((w @ w.T)[np.triu_indices(2000, k=1)]))
    tracemalloc.start()
    got = m.median_pairwise_cosine(v)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == expected
    assert peak < 30e6, f"{peak / 1e6:.0f} MB"
