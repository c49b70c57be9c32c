"""Index folders written by b690aef (before FaissStore was cut into parts) open and answer the same.

tests/data/index-b690aef/ holds three folders that commit wrote with the shipped images and tiny
model: ``flat`` (a finished build), ``pq`` (IVF2,PQ8x4 with its re-rank file and tuned settings) and
``crashed`` (a writer killed after flushing a second shard, before the snapshot: an open catches it
up), and ``answers.json``, what that code answered about them (record_answers.py says how).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest

from indexer.stores.faiss.store import FaissStore

DATA = Path(__file__).resolve().parents[3] / "data" / "index-b690aef"
ANSWERS = json.loads((DATA / "answers.json").read_text(encoding="utf-8"))


def _recorder():
    spec = importlib.util.spec_from_file_location("record_answers", DATA / "record_answers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORD = _recorder()


#: Keys added to the CLI's answers since the folders were recorded (features, not format changes): a
#: query hit's ``percentile`` (scores with context). Every recorded key must still be there, equal.
ADDED_SINCE = frozenset({"percentile"})


def assert_same(got, want, where="") -> None:
    """``got`` equals ``want``, floats to 1e-6 (keys of :data:`ADDED_SINCE` aside)."""
    if isinstance(want, float) or isinstance(got, float):
        assert math.isclose(got, want, rel_tol=0, abs_tol=1e-6), f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(set(got) - ADDED_SINCE) == sorted(want), (
            f"{where}: keys {sorted(got)} != {sorted(want)}"
        )
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.fixture(params=sorted(ANSWERS))
def old_folder(request, tmp_path) -> tuple[str, Path]:
    copy = tmp_path / request.param
    shutil.copytree(DATA / request.param, copy)
    return request.param, copy


def test_the_folders_are_small_and_complete():
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert size < 1 << 20
    assert (DATA / "pq" / "index.rerank").is_file() and len(
        list((DATA / "crashed" / "shards").iterdir())
    ) == 2
    assert ANSWERS["crashed"]["store"]["count"] == 19 and ANSWERS["pq"]["store"]["kind"] == "IVF2,PQ8x4"


def test_an_old_folder_answers_the_same(old_folder):
    name, folder = old_folder
    assert_same(RECORD.store_answers(folder), ANSWERS[name]["store"], name)


def test_the_commands_print_the_same_for_an_old_folder(old_folder):
    name, folder = old_folder
    assert_same(RECORD.cli_answers(folder), ANSWERS[name]["cli"], name)


def test_an_old_folder_answers_the_same_after_a_writer_opened_it(old_folder):
    """A writer that opens and closes the folder (catching ``crashed`` up, rewriting its snapshot)
    leaves the answers as they were; only the count the snapshot's ``faiss`` section records follows the
    shards."""
    name, folder = old_folder
    FaissStore(folder).close()
    want = copy.deepcopy(ANSWERS[name])
    count = want["store"]["count"]
    want["store"]["search_settings"]["count"] = want["cli"]["info"]["faiss"]["count"] = count
    assert_same(RECORD.store_answers(folder), want["store"], name)
    assert_same(RECORD.cli_answers(folder), want["cli"], name)
