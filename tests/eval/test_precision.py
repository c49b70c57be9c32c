"""Precision as a perturbation (eval/precision.py, `mae-eval precision`): bf16 against fp32 on one index."""

import json

import numpy as np
from click.testing import CliRunner

from eval.cli import main as eval_main
from eval.precision import compare_lists, variants
from indexer.cli import main as index_main


def test_compare_lists_by_hand():
    ref = [[1, 2, 3], [4, 5, 6]]
    other = [[1, 3, 9], [4, 5, 6]]
    v = np.eye(2, dtype=np.float32)
    w = np.array([[0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    got = compare_lists(ref, other, v, w, k=3)
    assert got["n"] == 2
    assert np.isclose(got["overlap_at_k"], (2 / 3 + 1) / 2) and np.isclose(got["overlap_at_k_min"], 2 / 3)
    assert got["identical_lists"] == 0.5
    assert np.isclose(got["cosine_min"], 0.6) and np.isclose(got["cosine_mean"], 0.8)


def test_variants_put_the_fp32_reference_first():
    assert [v.name for v in variants(False)] == ["fp32", "bf16"]
    assert [v.name for v in variants(True)] == ["fp32", "bf16", "fp32+compile", "bf16+compile"]


def test_mae_eval_precision_compares_bf16_with_fp32_on_the_same_index(tmp_path, real_subset, tiny_model_dir):
    """Before: no way to see what bf16 costs in retrieval (`mae-eval precision` did not exist). Now the
    fp32 row is the reference (overlap 1, cosine 1) and the bf16 row says how far its lists moved."""
    runner = CliRunner()
    built = runner.invoke(index_main, ["build", str(real_subset), "--index", str(tmp_path / "idx"), "--model",
                                       str(tiny_model_dir), "--device", "cpu"])  # fmt: skip
    assert built.exit_code == 0, built.output
    out = tmp_path / "precision.json"
    res = runner.invoke(eval_main, ["precision", "--index", str(tmp_path / "idx"), "--queries", "6", "-k", "5",
                                    "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    fp32, bf16 = rows["fp32"], rows["bf16"]
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert fp32["n"] == bf16["n"] == 6
    assert fp32["overlap_at_k"] == 1.0 and fp32["identical_lists"] == 1.0 and fp32["cosine_min"] > 0.99999
    # bf16 rounds activations to 8 bits of mantissa: vectors stay within a cosine of 1e-3 of fp32's, and
    # each query still finds itself in its own top-5, so at least 1 of 5 ids is shared.
    assert 0.999 < bf16["cosine_min"] < 1.0 + 1e-6
    assert 0.2 <= bf16["overlap_at_k_min"] <= bf16["overlap_at_k"] <= 1.0
    assert bf16["ms_per_image"] > 0
    assert "overlap_at_k" in res.output and "bf16" in res.output
