"""A new user's own plate, first class (issue 29): a folder of TIFFs named the lab's way (8-bit, float,
an OME z-stack, a plain 3-page stack), a CSV of well, treatment and dose whose paths are typed from the
working directory. The build matches the table and says how, the query table shows the tags, the planes of
one file are one group for mae-eval's exclusions and for defocus_z, and an eval with nothing to compare
says so."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from click.testing import CliRunner

from indexer.cli import main as index_main
from indexer.stores.faiss.store import FaissStore
from retriever.cli import main as search_main
from tests.conftest import REPO

OWN = REPO / "examples" / "own-data" / "images"


def _chdir_build(cwd: Path, data: Path, index: Path, model: Path, table: Path, *extra: str):
    """``mae-index build`` run from ``cwd`` (a table's relative paths may be read from there)."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(index_main, ["build", str(data), "--index", str(index), "--model", str(model),
                                               "--device", "cpu", "--no-progress", "--metadata", str(table),
                                               *extra])  # fmt: skip
    finally:
        os.chdir(old)


def _plain_stack(path: Path) -> None:
    """A plain (not OME) 3-page TIFF: three z-planes of one field, nothing in its name."""
    planes = [tifffile.imread(p) for p in sorted(OWN.glob("A*_actin*.tif"))[:1]]
    base = planes[0] if planes[0].dtype == np.uint16 else (planes[0] * 4095).astype(np.uint16)
    stack = np.stack([base, np.roll(base, 3, axis=0), np.roll(base, 7, axis=1)])
    tifffile.imwrite(path, stack, photometric="minisblack")


@pytest.fixture(scope="module")
def plate(tmp_path_factory, tiny_model_dir):
    """``(root, index, summary)``: the own-data images plus a plain stack, built with a table whose paths
    are relative to the working directory (``root``), not to the table's folder (``root/meta``)."""
    root = tmp_path_factory.mktemp("own")
    images = root / "lab" / "images"
    shutil.copytree(OWN, images)
    _plain_stack(images / "field_007.tif")
    rows = [
        ("lab/images/A01_dense_nuclei_8bit.tif", "A01", "1", "w1", "dmso", "0"),
        ("lab/images/A01_dense_actin_float.tif", "A01", "1", "w2", "dmso", "0"),
        ("lab/images/A02_control_actin_stack.ome.tif", "A02", "1", "w2", "dmso", "0"),
        ("lab/images/A09_mitotic_actin.tif", "A09", "1", "w2", "nocodazole", "0.1"),
        ("lab/images/A11_sparse_actin.tif", "A11", "1", "w2", "taxol", "1"),
        ("lab/images/field_007.tif", "A05", "", "w2", "taxol", "=1+1"),
    ]
    (root / "meta").mkdir()
    table = root / "meta" / "plate.csv"
    pd.DataFrame(rows, columns=["path", "well", "site", "channel", "treatment", "dose"]).to_csv(
        table, index=False
    )
    r = _chdir_build(
        root, images.resolve(), root / "idx", tiny_model_dir, Path("meta/plate.csv"), "--format", "json"
    )
    assert r.exit_code == 0, r.output
    return root, root / "idx", json.loads(r.stdout)


def test_table_paths_relative_to_the_working_directory_match_and_the_build_says_so(plate):
    """Before: 0 of 6 rows matched, exit 0, every image without tags. After: all matched, by that rule."""
    _, index, summary = plate
    assert summary["indexed"] == 10 and summary["without_metadata"] == 0
    assert summary["metadata"]["matched"] == summary["metadata"]["rows"] == 6
    assert summary["metadata"]["rules"] == {"working directory": 6}
    assert "relative to the working directory" in summary["metadata"]["said"]
    store = FaissStore(index, read_only=True)
    tags = {Path(r.path.split("#")[0]).name: dict(r.tags) for r in store.get(store.ids())}
    assert tags["A09_mitotic_actin.tif"] == {"treatment": "nocodazole", "dose": "0.1"}
    assert tags["field_007.tif"] == {"treatment": "taxol", "dose": "=1+1"}


def test_a_table_that_names_no_image_stops_the_build_before_any_work(plate, tmp_path, tiny_model_dir):
    """Before: exit 0, an index without tags, and a warning to "give a table with --metadata". After:
    exit 2 before the model loads, three table paths beside three images found, nothing written."""
    root, _, _ = plate
    bad = tmp_path / "wrong.csv"
    bad.write_text("path,treatment\n" + "".join(f"images/x{i}.tif,dmso\n" for i in range(5)))
    r = _chdir_build(tmp_path, root / "lab" / "images", tmp_path / "idx", tiny_model_dir, bad)
    assert r.exit_code == 2, r.output
    assert (
        "none of the 5 paths in the metadata table" in r.output and "10" not in r.output.split("\n")[0][:20]
    )
    assert all(f"images/x{i}.tif" in r.output for i in range(3)) and "images/x3.tif" not in r.output
    assert sum(name in r.output for name in os.listdir(root / "lab" / "images")) == 3
    assert str(tmp_path) in r.output and str(tmp_path / "wrong.csv") in r.output
    assert not (tmp_path / "idx").exists()


def test_images_without_a_row_are_warned_about_without_asking_for_a_table(tmp_path, tiny_model_dir, caplog):
    """Before: "Give a table with --metadata to add it", to a user who just did. After: the table named."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("A09_mitotic_actin.tif", "A11_sparse_actin.tif"):
        shutil.copy(OWN / name, images / name)
    table = tmp_path / "plate.csv"
    table.write_text("path,treatment\nimages/A09_mitotic_actin.tif,dmso\n")
    with caplog.at_level(logging.WARNING):
        r = _chdir_build(tmp_path, images, tmp_path / "idx", tiny_model_dir, table)
    assert r.exit_code == 0, r.output
    (warning,) = [m for m in caplog.messages if "A11_sparse_actin.tif" in m]
    assert "1 of 2 images have no row in the metadata table" in warning and str(table) in warning
    assert "Give a table with --metadata" not in warning
    assert "1 of 1 rows matched an image (1 relative to the table's folder" in r.output


def test_query_table_shows_each_hit_s_tags(plate):
    """Before: the table had rank, score, well, site, channel, z, id, path: no tags. After: a tags column."""
    _, index, _ = plate
    store = FaissStore(index, read_only=True)
    (a09,) = [r for r in store.get(store.ids()) if r.path.endswith("A09_mitotic_actin.tif")]
    r = CliRunner().invoke(search_main, ["query", "--id", str(a09.id), "--index", str(index), "-k", "10"])
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if line.strip().startswith("rank"))
    assert header.split() == [
        "rank",
        "score",
        "percentile",
        "well",
        "site",
        "channel",
        "z",
        "id",
        "tags",
        "path",
    ]
    first = next(line for line in r.stdout.splitlines() if line.strip().startswith("1 "))
    assert "dose=0.1;treatment=nocodazole" in first and str(a09.id) in first
    assert sum("treatment=" in line for line in r.stdout.splitlines()) == 10


def test_the_planes_of_a_plain_stack_are_one_group(plate):
    """Before: the plain stack's planes had z 0/1/2 and no site: each one's own relatives were itself only
    (a fallback), and the OME stack (no plate) the same. After: the file is their group, in the catalog
    and in the reference exclusions alike."""
    from eval import gallery
    from retriever.catalog import GROUP_KEYS, Catalog

    _, index, _ = plate
    store = FaissStore(index, read_only=True)
    records = store.get(store.ids())
    catalog = Catalog(store)
    for stem in ("field_007.tif", "A02_control_actin_stack.ome.tif"):
        planes = sorted(r.id for r in records if r.path.split("#")[0].endswith(stem))
        assert len(planes) == 3 and sorted(r.z for r in records if r.id in planes) == [0, 1, 2]
        for mode in ("site", "well"):
            fast = gallery.exclusions_from(catalog.relatives, planes, mode)
            ref = gallery.exclusions(records, planes, mode)
            assert fast == ref and fast.fallback == ()
            assert all(fast.excluded[q] >= set(planes) for q in planes)
        assert sorted(catalog.relatives(planes[0], GROUP_KEYS).tolist()) == planes
    single = next(r for r in records if r.path.endswith("A09_mitotic_actin.tif"))
    assert catalog.relatives(single.id, GROUP_KEYS) is None  # no plate: a single file stays unknown


def _eval(index, out, *extra):
    from eval.cli import main as eval_main

    return CliRunner().invoke(eval_main, ["robustness", "--index", str(index), "--out", str(out), "--device",
                                          "cpu", "-k", "3", *extra])  # fmt: skip


def test_defocus_z_pairs_the_planes_of_a_stack(plate, tmp_path):
    """Before: no pair (the planes had no site), an empty report, exit 0. After: each stack's middle
    plane is compared with its other two, one plane away each."""
    _, index, _ = plate
    r = _eval(index, tmp_path / "rep", "--perturb", "defocus_z")
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(tmp_path / "rep" / "rows.csv")
    store = FaissStore(index, read_only=True)
    by_id = {rec.id: rec for rec in store.get(store.ids())}
    assert sorted(rows["severity"]) == [1, 1, 1, 1]  # two stacks x (z 0, z 2) against z 1
    for q, other in zip(rows["query_id"], rows["slice_id"]):
        assert by_id[q].z == 1 and by_id[other].z in (0, 2)
        assert by_id[q].path.split("#")[0] == by_id[other].path.split("#")[0]


def test_an_eval_with_nothing_to_compare_exits_2_with_the_reason(plate, tmp_path):
    """Before: exit 0, an empty report, and matplotlib's "No artists with labels" warning on stderr.
    After: exit 2 with the reason, no report."""
    _, index, _ = plate
    store = FaissStore(index, read_only=True)
    single = next(r for r in store.get(store.ids()) if r.path.endswith("A09_mitotic_actin.tif"))
    (tmp_path / "q.csv").write_text(f"id\n{single.id}\n")
    r = _eval(index, tmp_path / "rep", "--perturb", "defocus_z", "--query-list", str(tmp_path / "q.csv"))
    assert r.exit_code == 2, r.output
    assert "nothing to compare: defocus_z found no query with its own field of view at another z" in r.output
    assert "Warning" not in r.output and "artist" not in r.output
    assert not (tmp_path / "rep" / "report.json").exists()


def _export(index, fmt, out, *extra):
    return CliRunner().invoke(index_main, ["export", "--index", str(index), "--format", fmt, "--out", str(out),
                                           *extra])  # fmt: skip


def _stored(index):
    store = FaissStore(index, read_only=True)
    ids = np.sort(store.ids())
    return ids, {r.id: r for r in store.get(ids)}, store.get_vectors(ids)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_one_row_per_image_with_fields_tags_and_vector(plate, tmp_path, fmt):
    """Before: no `mae-index export` (exit 2, no such command). After: every image once, read back with
    pandas: its fields, its tags as columns, its vector as f0..f{d-1}, exactly the stored float32."""
    _, index, _ = plate
    out = tmp_path / f"plate.{fmt}"
    r = _export(index, fmt, out)
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out)
    ids, records, vectors = _stored(index)
    d = vectors.shape[1]
    assert list(df.columns) == ["id", "path", "plate", "well", "row", "column", "site", "channel", "z", "source",
                                "dose", "treatment", *(f"f{i}" for i in range(d))]  # fmt: skip
    assert df["id"].tolist() == ids.tolist()
    np.testing.assert_array_equal(df[[f"f{i}" for i in range(d)]].to_numpy(np.float32), vectors)
    for row in df.itertuples(index=False):
        rec = records[row.id]
        assert (row.path, row.well, row.channel) == (rec.path, rec.well, rec.channel)
        assert (None if pd.isna(row.z) else int(row.z)) == rec.z
        assert (None if pd.isna(row.site) else int(row.site)) == rec.site
    doses = set(df["dose"])
    # A tag a spreadsheet would run as a formula is escaped in CSV (OWASP), kept as it is in parquet.
    assert ("'=1+1" if fmt == "csv" else "=1+1") in {str(v) for v in doses}


def test_export_anndata_x_is_the_vectors_and_obs_the_metadata(plate, tmp_path):
    import anndata

    _, index, _ = plate
    r = _export(index, "anndata", tmp_path / "plate.h5ad")
    assert r.exit_code == 0, r.output
    adata = anndata.read_h5ad(tmp_path / "plate.h5ad")
    ids, records, vectors = _stored(index)
    assert adata.shape == vectors.shape and list(adata.obs_names) == [str(i) for i in ids]
    np.testing.assert_array_equal(np.asarray(adata.X), vectors)
    assert list(adata.var_names[:2]) == ["f0", "f1"]
    assert {"well", "channel", "z", "treatment", "dose"} <= set(adata.obs.columns)
    assert adata.obs.loc[str(ids[0]), "treatment"] == records[int(ids[0])].tags[1][1]


def test_export_aggregate_well_is_the_median_per_well_and_channel(plate, tmp_path):
    """pycytominer's aggregate: the feature-wise median of each (plate, well, channel), with its count."""
    _, index, _ = plate
    r = _export(index, "parquet", tmp_path / "wells.parquet", "--aggregate", "well")
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(tmp_path / "wells.parquet")
    ids, records, vectors = _stored(index)
    groups: dict[tuple, list[int]] = {}
    for i, image_id in enumerate(ids.tolist()):
        groups.setdefault((records[image_id].well, records[image_id].channel), []).append(i)
    assert sorted(zip(df["well"], df["channel"])) == sorted(groups)
    for row in df.itertuples(index=False):
        members = groups[(row.well, row.channel)]
        assert row.count == len(members)
        feats = np.asarray([getattr(row, f"f{i}") for i in range(vectors.shape[1])], np.float32)
        np.testing.assert_allclose(feats, np.median(vectors[members], axis=0), rtol=1e-6)
    a02 = df[(df["well"] == "A02") & (df["channel"] == "w2")]
    assert a02["count"].tolist() == [3] and a02["treatment"].tolist() == ["dmso"]  # the OME stack's planes


def test_export_anndata_without_its_extra_names_the_extra(plate, tmp_path, monkeypatch):
    import sys

    _, index, _ = plate
    monkeypatch.setitem(sys.modules, "anndata", None)  # as if not installed
    r = _export(index, "anndata", tmp_path / "plate.h5ad")
    assert r.exit_code == 2
    assert "needs the [export] extra (anndata missing): pip install 'mae-microscopy[export]'" in r.output
    assert not (tmp_path / "plate.h5ad").exists()


def test_the_explorer_lists_only_its_own_index_s_reports_and_keeps_faiss_quiet(plate, tmp_path):
    """Before: report.json did not say which index it measured, the explorer listed every report folder
    beside its index, and `serve` logged faiss's loader lines (AVX512, AVX2). After: report.json holds the
    index uid, the page lists the reports of its own index only, and faiss's loader is quiet without -v."""
    import urllib.request

    from tests.support.serve import start_serve

    root, index, _ = plate
    r = _eval(index, root / "rep-own", "--perturb", "brightness", "--severities", "1", "--queries", "3")
    assert r.exit_code == 0, r.output
    uid = json.loads((index / "manifest.json").read_text())["index_uid"]
    assert json.loads((root / "rep-own" / "report.json").read_text())["index"]["index_uid"] == uid
    other = root / "rep-other"
    other.mkdir()
    (other / "report.html").write_text("<h1>another index</h1>")
    (other / "report.json").write_text(json.dumps({"index": {"index_uid": "f" * 32}}))
    proc, port = start_serve(index)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/config", timeout=30) as resp:
            reports = json.loads(resp.read())["reports"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert [rep["name"] for rep in reports] == ["rep-own"]
    log = Path(proc.log_path).read_text()
    assert "Serving 10 images" in log
    assert "faiss.loader" not in log and "Could not load library" not in log


@pytest.mark.parametrize("verbose", [0, 1])
def test_faiss_loader_lines_show_only_with_v(verbose):
    """The loader's lines are faiss's own INFO logging (logger faiss.loader): shown with -v only."""
    import subprocess
    import sys

    code = f"from indexer.cli.options import setup_logging; setup_logging({verbose}, floor=1); import faiss"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert ("faiss.loader" in out.stderr) == bool(verbose)
