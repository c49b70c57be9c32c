"""The per-(perturbation, severity) summary: means, intervals that hold, chance levels, small groups."""

import math

import pytest

from eval import chance
from eval.summary import summarise


def _row(q, sev, pert="blur", **metrics):
    return {"query_id": q, "perturbation": pert, "severity": sev, "value": float(sev), "candidates": 28,
            "self_candidates": 29, "identity": sev == 0 and pert != "defocus_z", **metrics}  # fmt: skip


def test_summarise_by_hand():
    rows = [
        _row(1, 3, self_at_1=0.0, rbo=0.5, self_rank=None),
        _row(1, 0, self_at_1=1.0, rbo=1.0, self_rank=1),
        _row(2, 0, self_at_1=1.0, rbo=1.0, self_rank=1),
        _row(2, 3, self_at_1=1.0, rbo=0.7, self_rank=1),
        _row(3, 3, self_at_1=1.0, rbo=0.9, self_rank=3),
        {**_row(1, 2, "defocus_z", self_at_1=1.0, rbo=float("nan")), "value": -4.0},
        {**_row(1, 2, "defocus_z", self_at_1=0.0, rbo=0.2), "value": 4.0},
    ]
    s = summarise(rows, metrics=("self_at_1", "rbo", "self_rank"), k=10)
    assert [(e["perturbation"], e["severity"], e["n"], e["n_queries"]) for e in s] == [
        ("blur", 0, 2, 2),
        ("blur", 3, 3, 3),
        ("defocus_z", 2, 2, 1),
    ]
    zero, three, dz = s
    # severity 0 of an array perturbation is the identity: exact, so a zero-width interval is honest
    assert zero["self_at_1"] == zero["self_at_1_low"] == zero["self_at_1_high"] == 1.0
    assert zero["self_at_1_method"] == "exact" and zero["rbo"] == 1.0 and zero["rbo_n"] == 2
    assert three["self_at_1"] == pytest.approx(2 / 3) and three["rbo"] == pytest.approx(0.7)
    assert three["self_rank"] == 2.0 and three["self_rank_n"] == 2 and three["self_at_1_n"] == 3
    assert three["self_at_1_method"] == "clopper-pearson"
    # Clopper-Pearson 2 of 3: [0.0943, 0.9916]
    assert three["self_at_1_low"] == pytest.approx(0.0943, abs=1e-4)
    assert three["self_at_1_high"] == pytest.approx(0.9916, abs=1e-4)
    assert 0 <= three["rbo_low"] < three["rbo"] < three["rbo_high"] <= 1
    # defocus_z: |dz| = 2 mixes -4 and +4 um, so no single value; the NaN RBO is dropped
    assert dz["value"] is None and dz["rbo"] == 0.2 and dz["rbo_n"] == 1
    # chance levels from each row's gallery: self@1 1/29, RBO of random lists on 28 candidates
    assert three["self_at_1_chance"] == pytest.approx(1 / 29)
    assert three["rbo_chance"] == pytest.approx(chance.rbo(28, 10, 0.9))
    c = three["rbo_chance"]
    assert three["rbo_corrected"] == pytest.approx((0.7 - c) / (1 - c))
    assert three["rbo_corrected_low"] == pytest.approx((three["rbo_low"] - c) / (1 - c))
    missing = summarise(rows[:1], metrics=("drift_l2",))[0]
    assert math.isnan(missing["drift_l2"]) and missing["drift_l2_n"] == 0
    assert summarise([]) == []
    assert summarise(rows, metrics=("rbo",), seed=4) == summarise(rows, metrics=("rbo",), seed=4)


def test_all_hits_is_not_a_zero_width_interval():
    # Issue 14: self@1 = 1.000 [1.000, 1.000] at n = 28, where the exact 95 % lower bound is 0.877.
    rows = [_row(q, 3, self_at_1=1.0, overlap_at_k=1.0) for q in range(28)]
    e = summarise(rows, metrics=("self_at_1", "overlap_at_k"))[0]
    assert e["self_at_1"] == 1.0 and e["self_at_1_high"] == 1.0
    assert e["self_at_1_low"] == pytest.approx(0.025 ** (1 / 28), abs=1e-9)  # 0.8766
    assert round(e["self_at_1_low"], 3) == 0.877
    # an all-equal mean is bounded by the metric's range, never a single point
    assert (
        e["overlap_at_k_low"] == pytest.approx(0.8766, abs=1e-4)
        and e["overlap_at_k_method"] == "all-equal-bound"
    )


def test_small_groups_are_marked():
    # Issue 14: Kendall tau = 1.000 from one query was reported as a result.
    rows = [_row(1, 5, kendall_tau=1.0)] + [_row(q, 4, kendall_tau=0.5 + q / 20) for q in range(6)]
    by_sev = {e["severity"]: e for e in summarise(rows, metrics=("kendall_tau",))}
    assert by_sev[5]["small_n"] is True and by_sev[5]["n_queries"] == 1
    assert by_sev[5]["kendall_tau_low"] < 0.1  # one value bounds almost nothing
    assert by_sev[4]["small_n"] is False


def test_a_query_is_one_cluster_across_slices():
    # Two slices (above and below focus) of the same 6 queries: 12 rows, 6 clusters. The interval must be
    # as wide as the one from the 6 query means, not the narrower one that 12 independent rows would give.
    vals = [0.1, 0.9, 0.3, 0.7, 0.5, 0.6]
    rows = [_row(q, 2, "defocus_z", rbo=v) for q, v in enumerate(vals) for _ in range(2)]
    one = [_row(q, 2, "defocus_z", rbo=v) for q, v in enumerate(vals)]
    twelve = [_row(q, 2, "defocus_z", rbo=v) for q, v in enumerate(vals * 2)]
    clustered = summarise(rows, metrics=("rbo",))[0]
    per_query = summarise(one, metrics=("rbo",))[0]
    naive = summarise(twelve, metrics=("rbo",))[0]
    assert clustered["n"] == 12 and clustered["n_queries"] == 6
    width = clustered["rbo_high"] - clustered["rbo_low"]
    assert width == pytest.approx(per_query["rbo_high"] - per_query["rbo_low"], rel=0.15)
    assert width > 1.2 * (naive["rbo_high"] - naive["rbo_low"])
