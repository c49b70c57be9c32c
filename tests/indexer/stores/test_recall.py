"""Recall@k of a store against exact search (one definition for verify and eval), by hand and by brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indexer.stores.recall import recall_at_k


def test_recall_at_k_by_hand():
    # query 1: {1, 2, 3} vs {1, 2, 9} -> 2/3; query 2: identical -> 1; mean 5/6
    assert recall_at_k([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 5, 6]], 3) == pytest.approx(5 / 6)
    # order inside the top k does not matter; only the top k of each counts
    assert recall_at_k([[3, 1, 2, 9]], [[1, 2, 3, 4]], 3) == 1.0
    # an index with one vector: exact search finds 1 < k, the store finds it too -> 1
    assert recall_at_k([[1]], [[1]], 10) == 1.0
    # FAISS arrays padded with -1: the padding is not an id
    approx = np.array([[1, 2, -1], [4, -1, -1]])
    exact = np.array([[1, 3, -1], [4, 5, -1]])
    assert recall_at_k(approx, exact, 3) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert math.isnan(recall_at_k([[1]], [[]], 3)) and math.isnan(recall_at_k([], [], 3))
    with pytest.raises(ValueError, match="queries"):
        recall_at_k([[1]], [[1], [2]], 3)


def test_recall_at_k_against_brute_force_search():
    # exact top-k by sorting all distances; "approximate" = the same search on a slightly noisy copy
    rng = np.random.default_rng(5)
    base, queries = rng.normal(size=(200, 8)), rng.normal(size=(30, 8))
    k = 10
    exact = np.argsort(((queries[:, None] - base[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :k]
    noisy = base + 0.3 * rng.normal(size=base.shape)
    approx = np.argsort(((queries[:, None] - noisy[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :k]
    by_loop = np.mean([len(set(approx[i]) & set(exact[i])) / k for i in range(30)])
    r = recall_at_k(approx, exact, k)
    assert r == pytest.approx(by_loop) and 0.0 < r < 1.0
    assert recall_at_k(exact, exact, k) == 1.0
