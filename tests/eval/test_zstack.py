"""Robustness on synthetic z-stacks: galleries that exclude a query's relatives from both lists, checked
against brute-force search; consistency must fall as defocus and noise grow."""

import numpy as np
import pytest

from eval import metrics as m
from eval.robustness import NATURAL, RobustnessConfig, run_robustness
from indexer.bbbc006.synthetic import SyntheticConfig, generate
from indexer.core.config import BuildConfig, ModelConfig, SourceConfig
from indexer.ingest.local import build_index
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.faiss.store import FaissStore
from retriever.search import Retriever

WELLS = ("A01", "A02", "A09", "A11", "B01", "B02", "B09", "B11")


@pytest.fixture(scope="module")
def retriever(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("zstack")
    generate(SyntheticConfig(out_dir=tmp / "data", wells=WELLS, sites=(1,), channels=(2,),
                             z_slices=(16, 19, 24, 31), seed=0))  # fmt: skip
    enc = ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    store = FaissStore(tmp / "idx", dim=enc.dim)
    cfg = BuildConfig(sources=SourceConfig(paths=(tmp / "data",)), index_dir=tmp / "idx", model=enc.config)
    build_index(cfg, [store], encoder=enc)
    store.close()
    return Retriever.open(FaissStore(tmp / "idx", read_only=True), device="cpu")


@pytest.fixture(scope="module")
def results(retriever):
    out = {}
    for mode in ("site", "image"):
        rc = RobustnessConfig(perturbations=("gaussian_noise", NATURAL), severities=(0, 1, 3, 5), n_queries=8,
                              k=5, exclude=mode)  # fmt: skip
        out[mode] = run_robustness(retriever, rc)
    return out


@pytest.fixture
def summary(results):
    return {(e["perturbation"], e["severity"]): e for e in results["site"].summary()}  # one curve each here


def _brute(store, vector, drop, k):
    ids = np.asarray(store.ids())
    sims = store.get_vectors(list(ids)) @ vector
    order = np.lexsort((ids, -sims))
    return [int(i) for i in ids[order] if int(i) not in drop][:k]


@pytest.mark.parametrize("mode", ["site", "image"])
def test_lists_match_brute_force_with_relatives_out_of_both(results, retriever, mode):
    store, result = retriever.store, results[mode]
    recs = {r.id: r for r in store.get(store.ids())}
    pos = {q: i for i, q in enumerate(result.query_ids)}
    k = 5
    checked = 0
    for row in result.rows:
        q = row["query_id"]
        site = {i for i, r in recs.items() if (r.well, r.site) == (recs[q].well, recs[q].site)}
        drop = site if mode == "site" else {q}
        if row["perturbation"] == NATURAL:
            drop = drop | {row["slice_id"]}  # the defocused slice leaves BOTH lists
            pvec = store.get_vectors([row["slice_id"]])[0]
        else:
            pvec = result.perturbed_vectors[(row["perturbation"], row["severity"])][pos[q]]
        clean = _brute(store, result.clean_vectors[pos[q]], drop, k)
        pert = _brute(store, pvec, drop, k)
        assert row["candidates"] == len(recs) - len(drop)
        assert row["overlap_at_k"] == pytest.approx(m.overlap_at_k(clean, pert, k))
        assert row["rbo"] == pytest.approx(m.rank_biased_overlap(clean, pert, p=0.9))
        assert not (set(clean) | set(pert)) & drop
        checked += 1
    assert checked == len(result.rows) > 0
    g = result.gallery
    assert g["exclude"] == mode and g["index_size"] == 32
    assert g["candidates_min"] == (28 if mode == "site" else 31)


def test_defocus_curves_say_what_they_contain(results):
    # Issue 14: every z-stack here is synthetic, so the defocus curve must say "synthetic", never "real".
    rows = [r for r in results["site"].rows if r["perturbation"] == NATURAL]
    assert (
        rows and {r["curve"] for r in rows} == {"synthetic"} and {r["source"] for r in rows} == {"synthetic"}
    )
    entries = [e for e in results["site"].summary() if e["perturbation"] == NATURAL]
    assert {e["curve"] for e in entries} == {"synthetic"} and {e["source"] for e in entries} == {"synthetic"}
    assert results["site"].gallery["query_sources"] == {"synthetic": 8}


def test_consistency_falls_as_defocus_grows(summary):
    dz = sorted(s for (p, s) in summary if p == NATURAL)
    assert summary[(NATURAL, 3)]["overlap_at_k"] > summary[(NATURAL, 15)]["overlap_at_k"]
    assert dz == [3, 8, 15]
    drift = [summary[(NATURAL, s)]["drift_cosine"] for s in dz]
    assert drift == sorted(drift) and drift[0] < drift[-1]
    assert summary[(NATURAL, 15)]["self_at_1"] <= summary[(NATURAL, 3)]["self_at_1"]
    # self@1 is measured among the 28 candidates plus the source
    assert summary[(NATURAL, 3)]["self_at_1_chance"] == pytest.approx(1 / 29)


def test_consistency_falls_as_noise_grows(summary):
    drift = [summary[("gaussian_noise", s)]["drift_cosine"] for s in (0, 1, 3, 5)]
    assert drift[0] == pytest.approx(0.0, abs=1e-6) and drift == sorted(drift)
    assert summary[("gaussian_noise", 0)]["overlap_at_k"] == 1.0
    assert summary[("gaussian_noise", 5)]["rbo"] < 1.0
    # chance of random top-5 lists from 28 candidates
    assert summary[("gaussian_noise", 5)]["overlap_at_k_chance"] == pytest.approx(5 / 28)
