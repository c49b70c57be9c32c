"""Recall@k of a store against exact search: one definition for ``mae-index verify`` and ``mae-eval``.

Pure: ids in, a number out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_list(ids: Sequence[int] | np.ndarray) -> list[Any]:
    # Plain Python values: set() and == then behave the same for lists and numpy arrays.
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


def recall_at_k(
    approx_ids: Sequence[Sequence[int]] | np.ndarray, exact_ids: Sequence[Sequence[int]] | np.ndarray, k: int
) -> float:
    """ANN recall of a store against exact search: mean over queries of ``|approx[:k] ∩ exact[:k]| / k``.

    Parameters
    ----------
    approx_ids : sequence of sequences of int, or (nq, >=k) array
        Per query, the ids the approximate store returned, best first.
    exact_ids : sequence of sequences of int, or (nq, >=k) array
        Per query, the ids of exact (brute-force) search, best first.
    k : int
        Depth (>= 1).

    Returns
    -------
    float
        In [0, 1]. Negative ids (FAISS's padding for missing results) are ignored. When exact search
        finds fewer than ``k`` results (an index smaller than ``k``), the denominator is that number,
        so a store that returns all of them scores 1. Queries with no exact result are skipped; NaN
        when none is left.

    Raises
    ------
    ValueError
        If the two have different numbers of queries, or ``k`` < 1.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    approx, exact = _as_list(approx_ids), _as_list(exact_ids)
    if len(approx) != len(exact):
        raise ValueError(f"approx and exact have {len(approx)} and {len(exact)} queries")
    vals = []
    for a, e in zip(approx, exact):
        truth = {x for x in _as_list(e)[:k] if x >= 0}
        if truth:
            found = {x for x in _as_list(a)[:k] if x >= 0}
            vals.append(len(found & truth) / len(truth))
    return float(np.mean(vals)) if vals else math.nan
