"""`--metadata table.csv|parquet`: your own images get plate, well, site, channel, z and tag columns,
filterable in both stores (issue 15, item 7)."""

import json
import logging

import pandas as pd
import pytest
import redis as redis_py
from click.testing import CliRunner

from indexer.cli import main as index_main
from indexer.stores.faiss.store import FaissStore
from retriever.cli import main as search_main
from tests.conftest import write_tiff


@pytest.fixture
def own_data(tmp_path, real_images):
    """Four fields of view named the lab's way, and a table describing them (one row for a missing file)."""
    from indexer.images.decode import decode_tiff

    d = tmp_path / "lab" / "images"
    for i, p in enumerate(real_images[:4]):
        write_tiff(d / f"field_{i:03d}.tif", decode_tiff(p.read_bytes()))
    table = pd.DataFrame(
        {
            "path": [f"images/field_{i:03d}.tif" for i in range(4)] + ["images/gone.tif"],
            "well": ["B2", "B2", "C3", "C3", "D4"],
            "site": ["1", "2", "1", "2", "1"],
            "channel": ["2", "2", "2", "DAPI", "2"],
            "z": ["5", "5", "5", "5", ""],
            "treatment": ["drug A", "drug A", "dmso", "dmso", "dmso"],
            "cells": ["U2OS", "U2OS", "U2OS", "", "U2OS"],
        }
    )
    table.to_csv(tmp_path / "lab" / "plate1.csv", index=False)
    return tmp_path / "lab", table


def _build(data, index, model, *extra):
    return CliRunner().invoke(index_main, ["build", str(data), "--index", str(index), "--model", str(model),
                                           "--device", "cpu", "--no-progress", "--format", "json", *extra])  # fmt: skip


def test_table_metadata_and_tags_are_indexed(own_data, tmp_path, tiny_model_dir, caplog):
    lab, _ = own_data
    with caplog.at_level(logging.WARNING):
        r = _build(lab / "images", tmp_path / "idx", tiny_model_dir, "--metadata", str(lab / "plate1.csv"))
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["indexed"] == 4 and s["without_metadata"] == 0
    assert any("1 of 5 paths in the metadata table" in m and "gone.tif" in m for m in caplog.messages)
    store = FaissStore(tmp_path / "idx", read_only=True)
    recs = {rec.path.rsplit("/", 1)[-1]: rec for rec in store.get(store.ids())}
    r0, r3 = recs["field_000.tif"], recs["field_003.tif"]
    assert (r0.well, r0.row, r0.column, r0.site, r0.channel, r0.z) == ("B02", "B", 2, 1, "w2", 5)
    assert dict(r0.tags) == {"treatment": "drug A", "cells": "U2OS"}
    assert r3.channel == "DAPI" and dict(r3.tags) == {"treatment": "dmso"}


def _query(image, index, *flags):
    return CliRunner().invoke(search_main, ["query", str(image), "--index", str(index), "--device", "cpu",
                                            "--format", "json", "-k", "10", *flags])  # fmt: skip


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tags_filter_in_both_stores(own_data, tmp_path, tiny_model_dir, redis_server, fmt):
    lab, table = own_data
    source = lab / "plate1.csv"
    if fmt == "parquet":
        source = lab / "plate1.parquet"
        table.to_parquet(source)
    redis = ["--redis-url", redis_server.url]
    r = _build(lab / "images", tmp_path / "idx", tiny_model_dir, "--metadata", str(source), *redis)
    assert r.exit_code == 0, r.output
    name = json.loads((tmp_path / "idx" / "manifest.json").read_text())["redis"]["index"]
    try:
        image = lab / "images" / "field_000.tif"
        for backend in (["--backend", "faiss"], redis):
            rows = json.loads(_query(image, tmp_path / "idx", "--tag", "treatment=drug A", *backend).stdout)
            assert sorted(row["path"].rsplit("/", 1)[-1] for row in rows) == [
                "field_000.tif",
                "field_001.tif",
            ]
            assert rows[0]["tags"] == {"cells": "U2OS", "treatment": "drug A"}
            rows = json.loads(_query(image, tmp_path / "idx", "--tag", "treatment=dmso", "--tag", "cells=U2OS",
                                     "--well", "c3", *backend).stdout)  # fmt: skip
            assert [row["path"].rsplit("/", 1)[-1] for row in rows] == ["field_002.tif"]
            r = _query(image, tmp_path / "idx", "--tag", "treatment=drug Z", *backend)
            assert r.exit_code == 0 and json.loads(r.stdout) == []
            assert "--tag treatment=drug Z matches nothing" in r.stderr and "treatment=dmso" in r.stderr
    finally:
        client = redis_py.Redis.from_url(redis_server.url)
        client.execute_command("FT.DROPINDEX", name, "DD")
        client.delete(f"{name}:manifest")
        client.close()


def test_a_bad_table_is_a_usage_error(own_data, tmp_path, tiny_model_dir):
    lab, table = own_data
    table.rename(columns={"path": "file"}).to_csv(lab / "bad.csv", index=False)
    r = _build(lab / "images", tmp_path / "idx", tiny_model_dir, "--metadata", str(lab / "bad.csv"))
    assert r.exit_code == 2 and "no 'path' column" in r.output
    table.assign(z=["x"] * 5).to_csv(lab / "bad.csv", index=False)
    r = _build(lab / "images", tmp_path / "idx", tiny_model_dir, "--metadata", str(lab / "bad.csv"))
    assert r.exit_code == 2 and "row 2: z must be a number" in r.output
    assert not (tmp_path / "idx").exists()
