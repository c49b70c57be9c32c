import json
import re

import pytest
from click.testing import CliRunner

from eval.cli import main as eval_main
from eval.robustness import RobustnessConfig, run_robustness
from indexer.cli import main as index_main
from indexer.core.errors import ConfigError
from indexer.stores.faiss.store import FaissStore
from retriever.search import Retriever


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model_dir, real_images):
    idx = tmp_path_factory.mktemp("robust") / "idx"
    r = CliRunner().invoke(index_main, ["build", str(real_images[0].parent), "--index", str(idx), "--model",
                                        str(tiny_model_dir), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return idx


@pytest.fixture(scope="module")
def result(index_dir):
    retriever = Retriever.open(FaissStore(index_dir, read_only=True), device="cpu")
    cfg = RobustnessConfig(perturbations=("gaussian_noise", "gaussian_blur"), severities=(0, 1, 3, 5),
                           n_queries=10, k=5, seed=3)  # fmt: skip
    return run_robustness(retriever, cfg)


def test_severity_0_is_perfect(result):
    level0 = [r for r in result.rows if r["severity"] == 0]
    assert len(level0) == 20
    for r in level0:
        assert r["self_rank"] == 1 and r["self_at_1"] == 1.0
        assert (
            r["overlap_at_k"] == 1.0
            and r["jaccard_at_k"] == 1.0
            and r["rbo"] == 1.0
            and r["kendall_tau"] == 1.0
        )
        assert r["drift_cosine"] == pytest.approx(0.0, abs=1e-6)


def test_drift_grows_and_consistency_falls_with_noise(result):
    summary = {(e["perturbation"], e["severity"]): e for e in result.summary()}
    for name in ("gaussian_noise", "gaussian_blur"):
        drift = [summary[(name, s)]["drift_cosine"] for s in (0, 1, 3, 5)]
        assert drift == sorted(drift) and drift[-1] > drift[1]
        # The 64-px test model averages most native-resolution noise away, so the top-k set rarely
        # changes here (the drop in overlap is asserted on the synthetic z-stacks with the 224-px model);
        # the order within it does: rank-biased overlap falls with severity and is below 1 at the top.
        rbo = [summary[(name, s)]["rbo"] for s in (0, 1, 3, 5)]
        assert rbo == sorted(rbo, reverse=True) and rbo[0] == 1.0 and rbo[-1] < 1.0
        overlap = [summary[(name, s)]["overlap_at_k"] for s in (0, 1, 3, 5)]
        assert overlap == sorted(overlap, reverse=True)
    assert result.median_nn_distance > 0


def test_cli_report_is_reproducible_and_complete(index_dir, tmp_path):
    args = ["robustness", "--index", str(index_dir), "--queries", "6", "--perturb", "gaussian_noise,brightness",
            "--severities", "0,2,5", "-k", "5", "--seed", "1", "--device", "cpu"]  # fmt: skip
    runner = CliRunner()
    a = runner.invoke(eval_main, [*args, "--out", str(tmp_path / "a")])
    b = runner.invoke(eval_main, [*args, "--out", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["config"]["seed"] == 1 and len(rep["query_ids"]) == 6
    assert {(e["perturbation"], e["severity"]) for e in rep["summary"]} == {
        (p, s) for p in ("gaussian_noise", "brightness") for s in (0, 2, 5)
    }
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Headline" in html
    assert (tmp_path / "a" / "summary.csv").read_text().startswith("perturbation,severity")
    assert "self_at_1" in a.output
    # What the explorer may serve of the folder (retriever.reports) is exactly what the report wrote.
    assert sorted(rep["files"]) == sorted(p.name for p in (tmp_path / "a").iterdir())


def test_unknown_perturbation_is_a_config_error():
    with pytest.raises(ConfigError, match="fog"):
        RobustnessConfig(perturbations=("fog",))


def test_compare_puts_two_models_side_by_side(index_dir, tmp_path, real_images):
    from indexer.model.presets import create_model

    other_model = create_model(tmp_path / "m2", "test", seed=7)
    other = tmp_path / "idx2"
    r = CliRunner().invoke(index_main, ["build", str(real_images[0].parent), "--index", str(other), "--model",
                                        str(other_model), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0
    out = tmp_path / "cmp"
    c = CliRunner().invoke(eval_main, ["compare", "--index", str(index_dir), "--index", str(other), "--queries", "4",
                                       "--perturb", "gaussian_blur", "--severities", "0,5", "--device", "cpu",
                                       "--out", str(out)])  # fmt: skip
    assert c.exit_code == 0, c.output
    rows = json.loads((out / "compare.json").read_text())
    assert {r["index"] for r in rows} == {str(index_dir), str(other)}
    assert len(list(out.glob("*/report.html"))) == 2


def _build(folder, idx, model):
    r = CliRunner().invoke(index_main, ["build", str(folder), "--index", str(idx), "--model", str(model),
                                        "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return idx


def test_one_image_index_is_refused_with_a_hint(tmp_path, tiny_model_dir, real_images):
    # Issue 16 item 14: eval on a 1-image index reported every metric as 1.000 with no warning.
    import shutil

    (tmp_path / "one").mkdir()
    shutil.copy(real_images[0], tmp_path / "one" / real_images[0].name)
    idx = _build(tmp_path / "one", tmp_path / "idx1", tiny_model_dir)
    args = ["robustness", "--index", str(idx), "--perturb", "gaussian_noise", "--severities", "0,5",
            "--device", "cpu", "--out", str(tmp_path / "rep")]  # fmt: skip
    r = CliRunner().invoke(eval_main, args)
    assert r.exit_code == 2, r.output
    assert (
        "k + 1 = 11" in r.output and "holds 1" in r.output and not (tmp_path / "rep" / "report.json").exists()
    )


def test_small_gallery_hint_followed(tmp_path, tiny_model_dir, real_subset):
    # 6 images, --exclude image: 5 candidates per query. k = 5 needs 6, so the run is refused; following
    # the hint (lower -k) works, and the report says how many candidates each query had.
    idx = _build(real_subset, tmp_path / "idx6", tiny_model_dir)
    base = ["robustness", "--index", str(idx), "--perturb", "gaussian_noise", "--severities", "0,5",
            "--device", "cpu", "--exclude", "image", "--queries", "6"]  # fmt: skip
    r = CliRunner().invoke(eval_main, [*base, "-k", "5", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "lower -k" in r.output
    r = CliRunner().invoke(eval_main, [*base, "-k", "4", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["gallery"]["candidates_min"] == rep["gallery"]["candidates_max"] == 5
    assert rep["gallery"]["queries_skipped"] == [] and rep["config"]["exclude"] == "image"


def test_report_gives_chance_levels_everywhere(index_dir, tmp_path):
    # Issue 14: on a small index random top-k lists score far above 0, and the report gave no floor.
    args = ["robustness", "--index", str(index_dir), "--queries", "8", "--perturb", "brightness,gaussian_noise",
            "--severities", "0,5", "-k", "10", "--device", "cpu", "--exclude", "image",
            "--out", str(tmp_path / "r")]  # fmt: skip
    r = CliRunner().invoke(eval_main, args)
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    g = rep["gallery"]
    assert g["index_size"] == 20 and g["candidates_median"] == 19
    for e in rep["summary"]:
        assert e["overlap_at_k_chance"] == pytest.approx(10 / 19, abs=1e-6)
        assert e["self_at_1_chance"] == pytest.approx(1 / 20, abs=1e-6)
        assert e["rbo_chance"] is not None and e["jaccard_at_k_chance"] is not None
        assert e["kendall_tau_chance"] == 0.0
        if e["overlap_at_k_corrected"] is not None and e["severity"] == 5:
            c = e["overlap_at_k_chance"]
            assert e["overlap_at_k_corrected"] == pytest.approx((e["overlap_at_k"] - c) / (1 - c), abs=1e-5)
    header = (tmp_path / "r" / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"overlap_at_k_chance", "rbo_corrected", "self_at_1_low", "n_queries", "candidates"} <= set(header)
    html = (tmp_path / "r" / "report.html").read_text()
    assert "overlap_at_k_chance" in html and "Gallery" in html and "Candidates per query: 19 to 19" in html
    assert re.search(r"perturbation\s+severity\s+n\s+gallery", r.output) and "rbo_corrected" in r.output


def test_unknown_exclusion_is_a_usage_error(index_dir, tmp_path):
    r = CliRunner().invoke(eval_main, ["robustness", "--index", str(index_dir), "--exclude", "plate",
                                       "--out", str(tmp_path / "x")])  # fmt: skip
    assert r.exit_code == 2 and "site" in r.output
    with pytest.raises(ConfigError, match="exclude"):
        RobustnessConfig(exclude="plate")


def _padded_copy(index_dir, dest, extra: int) -> list[int]:
    """A copy of ``index_dir`` with ``extra`` made-up records (whole z-stacks of other wells, random unit
    vectors) added; returns the ids of its real images."""
    import shutil

    import numpy as np

    from indexer.core.records import ImageRecord

    shutil.copytree(index_dir, dest)
    with FaissStore(dest) as store:
        real = sorted(store.ids().tolist())
        vectors = np.random.default_rng(0).normal(size=(extra, store.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        records = [
            ImageRecord(
                id=2**40 + i,
                path=f"extra/{i}.tif",
                plate="EXTRA",
                well=f"W{i // 136:03d}",
                site=1 + i // 68 % 2,
                channel=f"w{1 + i // 34 % 2}",
                z=i % 34,
            )  # fmt: skip
            for i in range(extra)
        ]
        store.add(vectors, records)
    return real


def test_eval_memory_does_not_grow_with_the_index(index_dir, tmp_path):
    """The eval's peak does not grow with the images indexed beside its queries, once the index is past
    the 2,000-vector sample its drift scale is measured on. It reads the gallery from the store's record
    columns (:mod:`retriever.catalog`), as the explorer does: 6 B per indexed image here (its sorted ids),
    against 193 B when it fetched a record object per image (``store.get(store.ids())``)."""
    import tracemalloc

    peaks = {}
    for extra in (2100, 8100):  # both past the 2,000-vector sample that sets the drift scale
        real = _padded_copy(index_dir, tmp_path / f"idx{extra}", extra)
        retriever = Retriever.open(FaissStore(tmp_path / f"idx{extra}", read_only=True), device="cpu")
        cfg = RobustnessConfig(perturbations=("gaussian_noise", "defocus_z"), severities=(1,), k=5,
                               query_ids=tuple(real[:2]))  # fmt: skip
        tracemalloc.start()
        run_robustness(retriever, cfg)
        peaks[extra] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    per_record = (peaks[8100] - peaks[2100]) / 6000
    assert per_record < 40, f"{per_record:.0f} B per indexed record"


def test_eval_makes_records_for_its_queries_and_their_results_not_for_every_indexed_image(
    index_dir, tmp_path, monkeypatch
):
    """The records an evaluation makes (``ImageRecord`` objects: its queries, their site's stacks, the
    hits it compares) are the same number whatever the index holds beside them. The gallery, the query
    sample and the exclusions are read from the store's record columns (:mod:`retriever.catalog`), not
    from one record object per indexed image (10 M of them for the plates users plan)."""
    from tests.support.records_made import records_made

    rows = {}
    counts = {}
    for extra in (2100, 6100):
        real = _padded_copy(index_dir, tmp_path / f"idx{extra}", extra)
        retriever = Retriever.open(FaissStore(tmp_path / f"idx{extra}", read_only=True), device="cpu")
        cfg = RobustnessConfig(perturbations=("gaussian_noise", "defocus_z"), severities=(1,), k=5,
                               query_ids=tuple(real[:2]))  # fmt: skip
        with records_made(monkeypatch) as made:
            result = run_robustness(retriever, cfg)
        counts[extra] = len(made)
        rows[extra] = result.rows
    assert counts[2100] == counts[6100] < 1000, counts
    # Each gallery is still the whole index less the query's site: 4,000 more candidates in the larger.
    assert len(rows[2100]) == len(rows[6100]) == 2
    assert [r["candidates"] + 4000 for r in rows[2100]] == [r["candidates"] for r in rows[6100]]
