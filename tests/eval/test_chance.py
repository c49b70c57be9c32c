"""Chance levels of the consistency metrics: exact formulas against a seeded simulation."""

import numpy as np
import pytest

from eval import chance
from eval import metrics as m


def _simulate(g, k, p, n=20000, seed=0):
    rng = np.random.default_rng(seed)
    out = {"overlap": [], "jaccard": [], "rbo": [], "tau": []}
    for _ in range(n):
        a, b = rng.permutation(g)[:k].tolist(), rng.permutation(g)[:k].tolist()
        out["overlap"].append(m.overlap_at_k(a, b, k))
        out["jaccard"].append(m.jaccard_at_k(a, b, k))
        out["rbo"].append(m.rank_biased_overlap(a, b, p=p))
        out["tau"].append(m.kendall_tau_intersection(a, b))
    return {key: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for key, v in out.items()}


def test_random_top10_on_30_images_is_far_from_zero():
    # Issue 14: on the quick-start index (N = 30, k = 10) random top-10 lists already score about a
    # third overlap; the report must say so.
    sim = _simulate(30, 10, 0.9)
    assert chance.overlap(30, 10) == pytest.approx(1 / 3)
    assert sim["overlap"] == pytest.approx(chance.overlap(30, 10), abs=0.005)
    assert chance.rbo(30, 10, 0.9) == pytest.approx(0.2171, abs=1e-4)
    assert sim["rbo"] == pytest.approx(chance.rbo(30, 10, 0.9), abs=0.005)
    assert sim["jaccard"] == pytest.approx(chance.jaccard(30, 10), abs=0.005)
    assert sim["tau"] == pytest.approx(chance.kendall_tau(30, 10), abs=0.02)


@pytest.mark.parametrize("g,k,p", [(11, 10, 0.9), (100, 10, 0.8), (500, 20, 0.95), (5, 1, 0.5)])
def test_exact_matches_simulation(g, k, p):
    sim = _simulate(g, k, p, n=8000, seed=g)
    assert sim["overlap"] == pytest.approx(chance.overlap(g, k), abs=0.01)
    assert sim["jaccard"] == pytest.approx(chance.jaccard(g, k), abs=0.01)
    assert sim["rbo"] == pytest.approx(chance.rbo(g, k, p), abs=0.01)


def test_levels_and_correction():
    assert chance.overlap(10, 10) == 1.0 and chance.jaccard(10, 10) == 1.0
    # the same 10 items in two random orders: RBO still rewards order, so its chance level is below 1
    assert chance.rbo(10, 10, 0.9) == pytest.approx(_simulate(10, 10, 0.9, n=4000)["rbo"], abs=0.01)
    assert chance.self_at_1(29) == pytest.approx(1 / 29)
    assert chance.chance_level("drift_cosine", 30, 10) is None
    assert chance.chance_level("overlap_at_k", 30, 10) == chance.overlap(30, 10)
    assert chance.corrected(1.0, 0.3) == 1.0 and chance.corrected(0.3, 0.3) == 0.0
    assert chance.corrected(0.4, 0.6) == pytest.approx(-0.5)  # worse than chance reads negative
    assert chance.corrected(0.9, 1.0) is None and chance.corrected(None, 0.2) is None
    with pytest.raises(ValueError):
        chance.overlap(0, 10)
