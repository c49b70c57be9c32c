import numpy as np
import pytest

from eval.phenotype import mean_average_precision, precision_at_k


def test_against_sklearn_average_precision():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    v = rng.normal(size=(40, 6))
    labels = rng.integers(0, 3, 40)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = vn @ vn.T
    ref = []
    for i in range(40):
        mask = np.arange(40) != i
        ref.append(average_precision_score(labels[mask] == labels[i], sims[i, mask]))
    assert mean_average_precision(v, labels) == pytest.approx(np.mean(ref), abs=1e-9)


def test_hand_cases():
    # two tight pairs far apart: every neighbour list starts with the partner
    v = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]])
    assert mean_average_precision(v, ["a", "a", "b", "b"]) == 1.0
    assert precision_at_k(v, ["a", "a", "b", "b"], 1) == 1.0
    # labels crossed with geometry. Item 0 ranks 1 (.99), 3 (.1), 2 (0): its relevant item 2 is 3rd -> AP 1/3.
    # Item 1 ranks 0 (.99), 3 (.198), 2 (.1): relevant item 3 is 2nd -> AP 1/2. Items 2 and 3 mirror 0 and 1.
    # mAP = (1/3 + 1/2 + 1/3 + 1/2) / 4 = 5/12.
    assert mean_average_precision(v, ["a", "b", "a", "b"]) == pytest.approx(5 / 12)
    assert precision_at_k(v, ["a", "b", "a", "b"], 1) == 0.0


def test_per_query_ap_and_well_interval():
    from eval.phenotype import average_precisions, chance_map, map_interval

    v = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]])
    aps = average_precisions(v, ["a", "b", "a", "b"])
    assert aps.tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 3, 1 / 2])
    rng = np.random.default_rng(1)
    labels = np.repeat(["x", "y", "z"], 20)
    wells = np.repeat(np.arange(30), 2)  # two images (sites) per well
    vecs = (
        rng.normal(size=(60, 8))
        + 3 * (labels[:, None] == np.array(["x", "y", "z"])[None, :]).repeat(3, 1)[:, :8]
    )
    m, lo, hi = map_interval(vecs, labels, wells)
    assert lo < m < hi and m == pytest.approx(np.nanmean(average_precisions(vecs, labels)))
    assert chance_map(labels) == pytest.approx(19 / 59)
