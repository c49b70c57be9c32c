import json

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import main as index_main
from indexer.core.errors import IndexMismatchError
from indexer.core.records import MetadataFilter
from indexer.stores.faiss.store import FaissStore
from retriever.cli import main as search_main
from retriever.search import QueryOptions, Retriever


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, tiny_model_dir, real_images):
    idx = tmp_path_factory.mktemp("idx")
    data = real_images[0].parent.parent
    r = CliRunner().invoke(
        index_main,
        ["build", str(data), "--index", str(idx), "--model", str(tiny_model_dir), "--device", "cpu",
         "--format", "json", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["indexed"] == 20 and summary["complete"]
    return idx


def test_query_returns_itself_first(built_index, real_images):
    store = FaissStore(built_index, read_only=True)
    retriever = Retriever.open(store, device="cpu")
    hits = retriever.search_files(real_images[:5], QueryOptions(k=3))
    for path, row in zip(real_images[:5], hits):
        assert row[0].record.path == str(path) and row[0].score >= 0.999
        assert [h.rank for h in row] == [1, 2, 3]
        assert row[0].score >= row[1].score >= row[2].score


def test_filters_and_large_k(built_index, real_images):
    retriever = Retriever.open(FaissStore(built_index, read_only=True), device="cpu")
    (hits,) = retriever.search_files(real_images[:1], QueryOptions(k=100, where=MetadataFilter(site=[1])))
    expected = sum(1 for p in real_images if "_s1_" in p.name)
    assert len(hits) == expected and all(h.record.site == 1 for h in hits)
    (hits,) = retriever.search_files(real_images[:1], QueryOptions(k=100))
    assert len(hits) == 20
    (hits,) = retriever.search_files(real_images[:1], QueryOptions(k=5, where=MetadataFilter(well=["p24"])))
    assert [h.record.well for h in hits] == ["P24"]
    (hits,) = retriever.search_files(real_images[:1], QueryOptions(k=5, where=MetadataFilter(channel=["w1"])))
    assert hits == []


def test_query_by_id_equals_query_by_file(built_index, real_images):
    retriever = Retriever.open(FaissStore(built_index, read_only=True), device="cpu")
    (by_file,) = retriever.search_files(real_images[2:3], QueryOptions(k=5))
    (by_id,) = retriever.search_ids([by_file[0].id], QueryOptions(k=5))
    assert [h.id for h in by_id] == [h.id for h in by_file]
    np.testing.assert_allclose([h.score for h in by_id], [h.score for h in by_file], atol=1e-5)


def test_other_model_is_refused(built_index, tmp_path):
    from indexer.model.presets import create_model

    other = create_model(tmp_path / "other", "test", seed=1)
    with pytest.raises(IndexMismatchError, match="not the one the index was built with"):
        Retriever.open(FaissStore(built_index, read_only=True), model_override=str(other), device="cpu")


def test_cli_json_csv_and_table(built_index, real_images):
    runner = CliRunner()
    args = ["query", str(real_images[0]), "--index", str(built_index), "-k", "3", "--device", "cpu"]
    r = runner.invoke(search_main, [*args, "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 3
    assert set(rows[0]) >= {
        "rank",
        "id",
        "score",
        "path",
        "plate",
        "well",
        "row",
        "column",
        "site",
        "channel",
        "z",
    }
    assert rows[0]["rank"] == 1 and rows[0]["score"] >= 0.999 and rows[0]["path"] == str(real_images[0])
    r = runner.invoke(search_main, [*args, "--format", "csv"])
    assert r.exit_code == 0 and r.stdout.splitlines()[0].startswith("query,rank,id,score")
    assert len(r.stdout.splitlines()) == 4
    r = runner.invoke(search_main, [*args, "--well", "A24", "--site", "2"])
    assert r.exit_code == 0 and "A24" in r.stdout and "M15" not in r.stdout


def test_cli_exit_codes(built_index, tmp_path):
    runner = CliRunner()
    r = runner.invoke(search_main, ["query", "--index", str(built_index)])
    assert r.exit_code == 2 and "give one or more query images" in r.output
    r = runner.invoke(search_main, ["query", "--id", "12345", "--index", str(built_index), "--device", "cpu"])
    assert r.exit_code == 2 and "not in the index" in r.output
    r = runner.invoke(search_main, ["query", "x.tif", "--index", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "no index at" in r.output
    r = runner.invoke(
        index_main, ["build", str(tmp_path), "--index", str(tmp_path / "i"), "--batch-size", "0"]
    )
    assert r.exit_code == 2


def test_info_command(built_index):
    r = CliRunner().invoke(index_main, ["info", "--index", str(built_index), "--format", "json"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["count"] == 20 and d["values"]["z"] == [16] and d["values"]["channel"] == ["w2"]
