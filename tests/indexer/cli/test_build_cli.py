"""`mae-index build` as a user meets it: empty inputs, names without metadata, re-runs and hints
(issue 15, items 3 and 8)."""

import json
import logging

import numpy as np
from click.testing import CliRunner

from indexer.cli import main as index_main
from tests.conftest import write_tiff


def _build(*args, model=None):
    cmd = ["build", *map(str, args), "--device", "cpu", "--no-progress"]
    if model is not None:
        cmd += ["--model", str(model)]
    return CliRunner().invoke(index_main, cmd)


def test_empty_folder_is_an_error_naming_what_was_looked_for(tmp_path, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    r = _build(tmp_path / "empty", "--index", tmp_path / "idx", model=tiny_model_dir)
    assert r.exit_code == 1, r.output
    assert "no images found" in r.output and str(tmp_path / "empty") in r.output
    assert ".tif" in r.output and ".zip" in r.output
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_filters_that_leave_nothing_say_which_filters(tmp_path, real_subset, tiny_model_dir):
    r = _build(real_subset, "--index", tmp_path / "idx", "--channels", "w1", "--z", "3", model=tiny_model_dir)
    assert r.exit_code == 1, r.output
    assert "no images found" in r.output and "channel w1" in r.output and "z 3" in r.output


def test_all_images_rejected_is_an_error(tmp_path, tiny_model_dir):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.tif").write_bytes(b"not a tiff")
    r = _build(d, "--index", tmp_path / "idx", model=tiny_model_dir)
    assert r.exit_code == 1, r.output
    assert "none of the 1 image" in r.output and "rejected.csv" in r.output


def test_names_without_metadata_give_one_warning_with_a_count(tmp_path, tiny_model_dir, real_images, caplog):
    d = tmp_path / "mine"
    for i in range(3):
        write_tiff(
            d / f"field_{i}.tif", np.random.default_rng(i).integers(0, 4000, (64, 64), dtype=np.uint16)
        )
    (d / real_images[0].name).write_bytes(real_images[0].read_bytes())
    with caplog.at_level(logging.WARNING):
        r = _build(d, "--index", tmp_path / "idx", "--format", "json", model=tiny_model_dir)
    assert r.exit_code == 0, r.output
    warnings = [m for m in caplog.messages if "do not follow the BBBC006" in m]
    assert len(warnings) == 1 and "3 of 4 images" in warnings[0] and "--metadata" in warnings[0]
    assert json.loads(r.stdout)["without_metadata"] == 3
