"""Issue 31, item 14: a --metadata table's numbers, repeated columns and near-miss field names are
checked when the table is read; a build exits 2 naming the row instead of a traceback or a lost batch."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from indexer.cli import main as index_main
from indexer.core.errors import ConfigError
from indexer.images.metadata_table import load_metadata_table
from tests.conftest import write_tiff


def _table(tmp_path, text: str):
    p = tmp_path / "t.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "column,value,says",
    [
        ("z", "inf", "z must be a whole number, got 'inf'"),
        ("z", "nan", "z must be a whole number"),
        ("z", "16.9", "z must be a whole number, got '16.9'"),  # b690aef: stored as 16
        ("z", "-5", "z must be between 0 and 1000000, got '-5'"),  # b690aef: stored as -5
        ("site", "1e30", "site must be between 0 and 1000000"),  # b690aef: the writer thread died
        ("site", "-1", "site must be between 0 and 1000000"),
        ("site", "two", "site must be a number, got 'two'"),
    ],
)
def test_bad_numbers_are_refused_naming_the_row(tmp_path, column, value, says):
    p = _table(tmp_path, f"path,{column}\na.tif,1\nb.tif,{value}\n")
    with pytest.raises(ConfigError, match=f"row 3: {says}"):
        load_metadata_table(p)


def test_whole_numbers_written_as_floats_are_kept(tmp_path):
    table = load_metadata_table(_table(tmp_path, "path,site,z\na.tif,2.0,16\n"))
    [meta] = table.rows.values()
    assert (meta.site, meta.z) == (2, 16)


def test_a_repeated_column_is_refused_and_a_near_miss_named(tmp_path, caplog):
    with pytest.raises(ConfigError, match="the column 'well' more than once"):
        load_metadata_table(_table(tmp_path, "path,well,well\na.tif,B2,C3\n"))  # b690aef: C3 kept silently
    with caplog.at_level(logging.WARNING):
        table = load_metadata_table(_table(tmp_path, "path,Well,Z\na.tif,B2,4\n"))
    [meta] = table.rows.values()
    assert dict(meta.tags) == {"Well": "B2", "Z": "4"} and meta.well is None
    assert "a column 'Well', not 'well'" in caplog.text and "a column 'Z', not 'z'" in caplog.text


def test_a_build_with_site_1e30_exits_2_naming_the_row(tmp_path, real_images, tiny_model_dir):
    from indexer.images.decode import decode_tiff

    d = tmp_path / "lab"
    write_tiff(d / "f0.tif", decode_tiff(real_images[0].read_bytes()))
    write_tiff(d / "f1.tif", decode_tiff(real_images[1].read_bytes()))
    (d / "t.csv").write_text("path,site\nf0.tif,1\nf1.tif,1e30\n")
    args = ["build", str(d), "--metadata", str(d / "t.csv"), "--index", str(tmp_path / "idx"), "--model",
            str(tiny_model_dir), "--device", "cpu", "--no-progress", "--format", "json"]  # fmt: skip
    r = CliRunner().invoke(index_main, args)
    assert r.exit_code == 2, r.output
    assert "row 3: site must be between 0 and 1000000, got '1e30'" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not (tmp_path / "idx" / "manifest.json").exists() or json.loads(
        (tmp_path / "idx" / "manifest.json").read_text()
    )
