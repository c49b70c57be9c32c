"""Filters that match nothing say so, and name the values the index holds (issue 15, item 2, CLI)."""

import json

import pytest
from click.testing import CliRunner

from indexer.cli import main as index_main
from indexer.core.records import MetadataFilter
from retriever.cli import main as search_main
from retriever.search import filter_warnings


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model_dir, real_images):
    idx = tmp_path_factory.mktemp("fw") / "idx"
    r = CliRunner().invoke(index_main, ["build", str(real_images[0].parent), "--index", str(idx), "--model",
                                        str(tiny_model_dir), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return idx


def _query(index, image, *flags):
    return CliRunner().invoke(search_main, ["query", str(image), "--index", str(index), "--device", "cpu",
                                            "--format", "json", *flags])  # fmt: skip


def test_unknown_well_and_channel_warn_with_the_values_held(index, real_images):
    r = _query(index, real_images[0], "--well", "Z99", "--channel", "w3")
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    assert "Z99 is not a BBBC006 well (A01-P24)" in r.stderr
    assert "w3 is not a BBBC006 channel (w1, w2)" in r.stderr
    assert "the index holds channel w2" in r.stderr
    assert "A14" in r.stderr and "P24" in r.stderr  # the wells it holds


def test_a_valid_value_not_in_the_index_warns_too(index, real_images):
    r = _query(index, real_images[0], "--well", "B02", "--z", "3")
    assert r.exit_code == 0
    assert "B02 is not in the index" in r.stderr and "z 3 is not in the index" in r.stderr
    assert "the index holds z 16" in r.stderr


def test_values_that_match_give_no_warning(index, real_images):
    r = _query(index, real_images[0], "--well", "a14", "--channel", "2", "--z", "16")
    assert r.exit_code == 0 and len(json.loads(r.stdout)) >= 1
    assert "Warning" not in r.stderr


def test_a_well_that_is_no_well_at_all_is_a_warning_not_a_traceback(index, real_images):
    r = _query(index, real_images[0], "--well", "99")
    assert r.exit_code == 0, r.output
    assert "99 is not a BBBC006 well" in r.stderr


def test_filter_warnings_is_pure_and_lists_at_most_a_few_values():
    held = {"well": [f"A{i:02d}" for i in range(1, 25)], "site": [1, 2], "channel": ["w1"], "z": [16],
            "plate": ["p"]}  # fmt: skip
    (w,) = filter_warnings(MetadataFilter(site=[3]), held)
    assert w == "--site 3 matches nothing: 3 is not a BBBC006 site (1, 2); the index holds site 1, 2"
    (w,) = filter_warnings(MetadataFilter(well=["B01"]), held)
    assert "A01, A02" in w and "(24 values)" in w and "A24" not in w
    assert filter_warnings(MetadataFilter(well=["A01"], site=[1]), held) == []
