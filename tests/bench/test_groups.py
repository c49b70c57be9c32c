"""``python -m bench run GROUP --quick`` of two cheap groups writes rows of real numbers, and ``report``
turns them into tables."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.harness import REPO, read_rows


def bench(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    bench("run", "decode", "--quick", "--results", str(folder))
    bench("run", "catalog", "--quick", "--results", str(folder))
    return folder


def test_decode_quick_measures_each_step_of_the_real_images(results):
    rows = {r.case: r for r in read_rows(results / "decode.jsonl")}
    steps = ["content hash (BLAKE2b)", "decode, tifffile strip loop", "decode, libtiff (decode_tiff)",
             "preprocess to 3x224x224"]  # fmt: skip
    assert set(rows) == {*steps, "libtiff vs tifffile decode (identical pixels)"}
    for step in steps:
        r = rows[step]
        assert r.metric == "per_image" and r.unit == "ms" and 0.05 < r.value < 2000
        assert r.parameters == {"repeats": 2, "images": 20} and r.quick and r.group == "decode"
    ratio = rows["decode, tifffile strip loop"].value / rows["decode, libtiff (decode_tiff)"].value
    assert rows["libtiff vs tifffile decode (identical pixels)"].value == pytest.approx(ratio, rel=1e-4)


def test_catalog_quick_shows_the_columns_hold_less_and_answer_faster_than_the_dict(results):
    rows = {(r.case, r.metric): r.value for r in read_rows(results / "catalog.jsonl")}
    catalog = rows["catalog (columns, facets, group index)", "memory_added"]
    as_dict = rows["a dict of every record (before)", "memory_added"]
    assert 1 < catalog < as_dict
    assert (
        rows["siblings (GET /api/record/{id})", "per_request"]
        < rows["siblings, a scan of every record (before)", "per_request"]
    )
    assert {r.parameters["n"] for r in read_rows(results / "catalog.jsonl")} == {4096}


def test_report_renders_the_runs_rows(results, tmp_path):
    out = tmp_path / "results.md"
    bench("report", "--results", str(results), "--out", str(out))
    page = out.read_text()
    assert "## decode" in page and "## catalog" in page
    assert page.count("**quick run**") == 2 and page.count("**load average") == 2
    assert "| decode, libtiff (decode_tiff) | per_image |" in page
