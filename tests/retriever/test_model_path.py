"""An index works from anywhere: the model path resolves from any directory, can be overridden in every
reader, and is not needed for --id queries (issue 15, item 4); re-runs take the manifest's model and
name what differs (item 8)."""

import json
import shutil

import pytest
from click.testing import CliRunner

from eval.cli import main as eval_main
from indexer.cli import main as index_main
from retriever.cli import main as search_main


@pytest.fixture
def relative_build(tmp_path, monkeypatch, tiny_model_dir, real_images):
    """An index built from ``tmp_path/work`` with a *relative* --model path, as the README does."""
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, work / "models" / "m")
    data = work / "data"
    data.mkdir()
    for p in real_images[:6]:
        shutil.copy(p, data / p.name)
    monkeypatch.chdir(work)
    r = CliRunner().invoke(index_main, ["build", "data", "--index", "runs/idx", "--model", "models/m",
                                        "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return work


def _query(index, image, *extra):
    return CliRunner().invoke(search_main, ["query", str(image), "--index", str(index), "-k", "2",
                                            "--device", "cpu", "--format", "json", *extra])  # fmt: skip


def test_query_from_another_directory(relative_build, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    image = next((relative_build / "data").glob("*.tif"))
    r = _query(relative_build / "runs" / "idx", image)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["score"] > 0.999


def test_index_and_model_moved_together_still_work(relative_build, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.move(str(relative_build), str(moved))  # the absolute path recorded is gone now
    monkeypatch.chdir(tmp_path)
    r = _query(moved / "runs" / "idx", next((moved / "data").glob("*.tif")))
    assert r.exit_code == 0, r.output


def test_lost_model_is_a_message_and_model_overrides_it(relative_build, tmp_path, monkeypatch):
    shutil.move(str(relative_build / "models" / "m"), str(tmp_path / "m2"))
    monkeypatch.chdir(tmp_path)
    index = relative_build / "runs" / "idx"
    image = next((relative_build / "data").glob("*.tif"))
    r = _query(index, image)
    assert r.exit_code == 1 and "Traceback" not in r.output and r.exception is not None
    assert isinstance(r.exception, SystemExit)
    assert "--model" in r.output and "models/m" in r.output
    r = _query(index, image, "--model", str(tmp_path / "m2"))
    assert r.exit_code == 0, r.output
    # mae-eval takes the same override (run where the images' recorded relative paths lead).
    monkeypatch.chdir(relative_build)
    args = ["robustness", "--index", str(index), "--queries", "2", "--perturb", "gaussian_noise",
            "--severities", "0,1", "-k", "2", "--device", "cpu", "--out", str(tmp_path / "rep")]  # fmt: skip
    r = CliRunner().invoke(eval_main, args)
    assert r.exit_code == 1 and "--model" in r.output
    r = CliRunner().invoke(eval_main, [*args, "--model", str(tmp_path / "m2")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "report.json").exists()


def test_id_queries_need_no_model(relative_build, tmp_path, monkeypatch):
    index = relative_build / "runs" / "idx"
    image = next((relative_build / "data").glob("*.tif"))
    first = json.loads(_query(index, image).stdout)[0]["id"]
    shutil.rmtree(relative_build / "models")
    r = CliRunner().invoke(search_main, ["query", "--id", str(first), "--index", str(index), "-k", "2",
                                         "--format", "json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert rows[0]["id"] == first and rows[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_id_hint_is_a_command_that_works(relative_build):
    index = relative_build / "runs" / "idx"
    r = CliRunner().invoke(search_main, ["query", "--id", "12345", "--index", str(index)])
    assert r.exit_code == 2 and "not in" in r.output
    hint = r.output.split("`")[1]  # the command the hint names, with IMAGE and DIR to fill in
    image = next((relative_build / "data").glob("*.tif"))
    args = hint.split()[1:]
    args = [str(image) if a == "IMAGE" else str(index) if a == "DIR" else a for a in args]
    assert hint.split()[0] == "mae-search"
    r = CliRunner().invoke(search_main, args)
    assert r.exit_code == 0, r.output
    some_id = json.loads(r.stdout)[0]["id"]
    r = CliRunner().invoke(search_main, ["query", "--id", str(some_id), "--index", str(index)])
    assert r.exit_code == 0, r.output


def test_rerun_without_model_takes_the_manifests(relative_build, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(index_main, ["build", str(relative_build / "data"), "--index",
                                        str(relative_build / "runs" / "idx"), "--device", "cpu",
                                        "--no-progress", "--format", "json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["skipped_existing"] == 6 and s["indexed"] == 0 and s["index_count"] == 6


def test_preprocessing_mismatch_names_the_field(relative_build):
    r = CliRunner().invoke(index_main, ["build", "data", "--index", "runs/idx", "--intensity", "fixed",
                                        "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 1
    assert "preprocess.intensity.mode: index has 'percentile', this run has 'fixed'" in r.output
    assert "{" not in r.output  # no dicts printed
    # The hint: re-run without the preprocessing flags, and it works.
    r = CliRunner().invoke(
        index_main, ["build", "data", "--index", "runs/idx", "--device", "cpu", "--no-progress"]
    )
    assert r.exit_code == 0, r.output
