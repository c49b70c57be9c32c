"""Each option of ``mae-index build`` is parsed once, by the CLI, into the typed value the config takes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.cli.build import build
from indexer.core.config import FaissIndexSpec
from indexer.core.records import MetadataFilter


def _params(tmp_path, *args: str) -> dict:
    ctx = build.make_context("build", [str(tmp_path), "--index", str(tmp_path / "idx"), *args])
    return ctx.params


def test_faiss_index_and_memory_are_parsed_into_typed_values(tmp_path):
    # b690aef: the CLI passed the text on; BuildConfig parsed it again (importing stores.faiss.kinds from
    # core), and the FAISS store a third time, comparing it with "auto" on the way.
    assert _params(tmp_path, "--faiss-index", "hnsw")["faiss_index"] == FaissIndexSpec("HNSW32")
    assert _params(tmp_path, "--faiss-index", " IVF64,PQ8 ")["faiss_index"] == FaissIndexSpec("IVF64,PQ8")
    auto = _params(tmp_path, "--faiss-index", "auto")["faiss_index"]
    assert auto.auto and str(auto) == "auto" and str(FaissIndexSpec("Flat")) == "Flat"
    assert _params(tmp_path)["faiss_index"] is None  # keep the folder's
    assert _params(tmp_path)["faiss_memory"] == 4 * 2**30
    assert _params(tmp_path, "--faiss-memory", "512M")["faiss_memory"] == 512 * 2**20


def test_window_is_parsed_into_two_floats(tmp_path):
    # b690aef: the text reached the command body, which split it (and raised a ConfigError there).
    assert _params(tmp_path, "--window", "0,255")["window"] == (0.0, 255.0)
    assert _params(tmp_path)["window"] is None


def test_fit_on_values_become_one_filter(tmp_path):
    p = _params(tmp_path, "--normalize", "whiten", "--fit-on", "well=a01,A02", "--fit-on", "site=1")
    assert p["fit_on"] == MetadataFilter(well=("A01", "A02"), site=(1,)) and p["normalize_kind"] == "whiten"
    assert _params(tmp_path)["fit_on"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faiss-index", "IVF,PQ"], "Invalid value for '--faiss-index': unknown FAISS index kind 'IVF,PQ'"),
        (["--faiss-memory", "lots"], "Invalid value for '--faiss-memory': --faiss-memory takes a size"),
        (["--fit-on", "colour=red"], "Invalid value for '--fit-on': 'colour=red': give FIELD=VALUE"),
        (["--normalize", "sphere"], "Invalid value for '--normalize'"),
        (["--normalize-eps", "-1"], "Invalid value for '--normalize-eps'"),
        (["--window", "0-4095"], "Invalid value for '--window': takes LOW,HIGH (e.g. 0,4095), got '0-4095'"),
        (["--engine", "ray", "--concurrency", "0"], "Error: --concurrency must be >= 1"),
    ],
)
def test_a_bad_value_is_a_usage_error_before_any_work(tmp_path, args, message):
    r = CliRunner().invoke(main, ["build", str(tmp_path), "--index", str(tmp_path / "idx"), *args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "idx").exists()
