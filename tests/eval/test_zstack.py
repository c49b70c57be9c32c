"""Robustness on synthetic z-stacks: real (generated) defocus and noise must lower consistency."""

import pytest

from eval.robustness import NATURAL, RobustnessConfig, run_robustness
from indexer.bbbc006.synthetic import SyntheticConfig, generate
from indexer.build.local import build_index
from indexer.config import BuildConfig, ModelConfig, SourceConfig
from indexer.encoder import ViTMAEEncoder
from indexer.stores.faiss_store import FaissStore
from retriever.search import Retriever


@pytest.fixture(scope="module")
def summary(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("zstack")
    generate(SyntheticConfig(out_dir=tmp / "data", wells=("A01", "A02", "A09", "A11", "B01", "B02", "B09", "B11"),
                             sites=(1,), channels=(2,), z_slices=(16, 19, 24, 31), seed=0))  # fmt: skip
    enc = ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    store = FaissStore(tmp / "idx", dim=enc.dim)
    cfg = BuildConfig(sources=SourceConfig(paths=(tmp / "data",)), index_dir=tmp / "idx", model=enc.config)
    build_index(cfg, [store], encoder=enc)
    store.close()
    retriever = Retriever.open(FaissStore(tmp / "idx", read_only=True), device="cpu")
    rc = RobustnessConfig(
        perturbations=("gaussian_noise", NATURAL), severities=(0, 1, 3, 5), n_queries=8, k=5
    )
    result = run_robustness(retriever, rc)
    return {(e["perturbation"], e["severity"]): e for e in result.summary()}


def test_consistency_falls_as_defocus_grows(summary):
    dz = sorted(s for (p, s) in summary if p == NATURAL)
    assert dz == [3, 8, 15]
    drift = [summary[(NATURAL, s)]["drift_cosine"] for s in dz]
    overlap = [summary[(NATURAL, s)]["overlap_at_k"] for s in dz]
    assert drift == sorted(drift) and drift[0] < drift[-1]
    assert overlap[-1] < overlap[0]
    assert summary[(NATURAL, 15)]["self_at_1"] <= summary[(NATURAL, 3)]["self_at_1"]


def test_consistency_falls_as_noise_grows(summary):
    drift = [summary[("gaussian_noise", s)]["drift_cosine"] for s in (0, 1, 3, 5)]
    assert drift[0] == pytest.approx(0.0, abs=1e-6) and drift == sorted(drift)
    assert summary[("gaussian_noise", 0)]["overlap_at_k"] == 1.0
    assert summary[("gaussian_noise", 5)]["rbo"] < 1.0
