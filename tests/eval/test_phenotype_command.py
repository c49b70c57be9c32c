"""mae-eval phenotype: mAP as copairs computes it (checked against copairs itself), and the command on a
real index with a --metadata label, its baselines, intervals, chance and outputs."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from eval.cli import main as eval_main
from eval.phenotype import chance_of, expected_ap, pair_average_precisions, well_profiles
from indexer.cli import main as index_main


def _plate(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["ctrl", "a", "b", "c"], 8)  # 4 labels x 4 wells x 2 sites
    wells = np.repeat([f"W{i:02d}" for i in range(16)], 2)
    centres = rng.normal(size=(4, 12))
    codes = {"ctrl": 0, "a": 1, "b": 2, "c": 3}
    feats = centres[[codes[v] for v in labels]] * 0.8 + rng.normal(size=(32, 12))
    return feats, labels, wells


def _copairs(feats, meta, pos_sameby, pos_diffby, neg_sameby, neg_diffby):
    from copairs.map import average_precision

    return average_precision(meta, feats, pos_sameby, pos_diffby, neg_sameby, neg_diffby, progress_bar=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_matches_copairs_against_other_labels(seed):
    feats, labels, wells = _plate(seed)
    aps, n_pos, n_total = pair_average_precisions(feats, labels, wells)
    meta = pd.DataFrame({"label": labels, "well": wells})
    ref = _copairs(feats, meta, ["label"], ["well"], [], ["label"])
    np.testing.assert_allclose(aps, ref["average_precision"].to_numpy(), atol=1e-9)
    assert n_pos.tolist() == ref["n_pos_pairs"].tolist() and n_total.tolist() == ref["n_total_pairs"].tolist()
    # 8 images a label in 4 wells: the other site of its own well is neither positive nor negative
    assert n_pos.tolist() == [6] * 32 and n_total.tolist() == [6 + 24] * 32
    # chance: copairs' expected AP of a random ranking, averaged over the queries
    assert chance_of(n_pos, n_total, aps) == pytest.approx(expected_ap(6, 24))
    from copairs.map.normalization import expected_ap as ref_expected

    assert expected_ap(6, 24) == pytest.approx(ref_expected(6, 24))


def test_ap_matches_copairs_against_negative_controls():
    feats, labels, wells = _plate(3)
    controls = labels == "ctrl"
    aps, n_pos, n_total = pair_average_precisions(feats, labels, wells, controls)
    meta = pd.DataFrame({"label": labels, "well": wells, "ctrl": controls})
    # copairs' activity set-up: positives share the label in another well, negatives pair with a control
    ref = _copairs(feats, meta, ["label"], ["well"], [], ["ctrl"])
    treated = ~controls
    np.testing.assert_allclose(aps[treated], ref["average_precision"].to_numpy()[treated], atol=1e-9)
    assert np.isnan(aps[controls]).all()  # controls are the reference, not queries
    assert n_total[treated].tolist() == [6 + 8] * 24


def test_well_level_profiles_are_well_means():
    feats, labels, wells = _plate(0)
    prof, lab, names = well_profiles(feats, labels, wells)
    assert prof.shape == (16, 12) and names[0] == "W00" and lab[0] == "ctrl"
    np.testing.assert_allclose(prof[0], feats[:2].mean(0))
    with pytest.raises(ValueError, match="use --level image"):
        well_profiles(feats, np.roll(labels, 1), wells)


# --- the command on a real index --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_index(tmp_path_factory, tiny_model_dir, real_images):
    import tifffile

    root = tmp_path_factory.mktemp("pheno")

    # The label follows how much of the windowed field is bright (pixels above the middle of the 1-99.8
    # percentile window the index maps to [0, 1]): what a histogram of the model input sees.
    def bright_share(p):
        im = tifffile.imread(p).astype(float)
        lo, hi = np.percentile(im, [1, 99.8])
        return float((im > (lo + hi) / 2).mean())

    means = {p: bright_share(p) for p in real_images}
    cut = np.median(list(means.values()))
    table = root / "plate.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "treatment"])
        for p, m in means.items():
            w.writerow([str(p), "bright" if m > cut else "dim"])
    idx = root / "idx"
    r = CliRunner().invoke(index_main, ["build", str(real_images[0].parent), "--index", str(idx), "--model",
                                        str(tiny_model_dir), "--metadata", str(table), "--device", "cpu",
                                        "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return idx


def test_phenotype_command_writes_model_and_baselines_with_intervals(labelled_index, tmp_path):
    out = tmp_path / "pheno"
    r = CliRunner().invoke(eval_main, ["phenotype", "--index", str(labelled_index), "--label", "treatment",
                                       "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((out / "phenotype.json").read_text())
    rows = {o["embedding"]: o for o in res["overall"]}
    assert list(rows) == ["model", "histogram", "classical"]
    for o in rows.values():
        assert 0 <= o["map_low"] <= o["map"] <= o["map_high"] <= 1 and o["map_low"] < o["map_high"]
        assert o["n_queries"] == 20 and o["n_groups"] == 19  # 19 wells: one holds both sites
        # 10 images a label among 20: chance is about half (exactly copairs' E[AP] for each query's pairs)
        assert 0.4 < o["chance"] < 0.6
    # the label is brightness: the histogram of the model input retrieves it far above chance
    print({e: (round(o["map"], 3), round(o["chance"], 3)) for e, o in rows.items()})
    assert rows["histogram"]["map"] > rows["histogram"]["chance"] + 0.05
    assert {(b["embedding"], b["label"]) for b in res["by_label"]} == {
        (e, lab) for e in rows for lab in ("bright", "dim")
    }
    csv_rows = list(csv.DictReader(open(out / "phenotype.csv")))
    assert len(csv_rows) == 3 + 6 and csv_rows[0]["label"] == "(all)"
    assert "data:image/png;base64," in (out / "phenotype.html").read_text()
    assert "histogram  mAP" in r.output


def test_phenotype_well_level_and_negative_controls(labelled_index, tmp_path):
    # A well's sites differ in site: the well level refuses that label with the way out.
    r = CliRunner().invoke(eval_main, ["phenotype", "--index", str(labelled_index), "--label", "site",
                                       "--out", str(tmp_path / "s"), "--level", "well", "--baseline", ""])  # fmt: skip
    assert r.exit_code == 2 and "holds images labelled 1, 2: use --level image" in r.output
    r = CliRunner().invoke(eval_main, ["phenotype", "--index", str(labelled_index), "--label", "treatment",
                                       "--out", str(tmp_path / "w"), "--level", "well", "--baseline", "histogram",
                                       "--negatives", "treatment=dim"])  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "w" / "phenotype.json").read_text())
    assert res["level"] == "well" and res["n_profiles"] == 19 and res["negatives"] == "treatment=dim"
    assert [o["embedding"] for o in res["overall"]] == ["model", "histogram"]
    # only the treated (bright) wells query; the dim ones are their negatives
    assert all(o["n_queries"] == 10 for o in res["overall"]) or all(
        o["n_queries"] == 9 for o in res["overall"]
    )
    assert {b["label"] for b in res["by_label"] if b["map"] is not None} == {"bright"}


def test_unknown_label_names_the_tags_that_exist(labelled_index, tmp_path):
    r = CliRunner().invoke(eval_main, ["phenotype", "--index", str(labelled_index), "--label", "treatmnt",
                                       "--out", str(tmp_path / "x"), "--baseline", ""])  # fmt: skip
    assert r.exit_code == 2 and "--metadata tags (treatment)" in r.output
