"""Scores with context: each hit's percentile among the index's own nearest-neighbour scores, in
``mae-search query`` output (json, csv, table), computed once per index state and kept beside it."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.core.records import ImageRecord
from indexer.stores.faiss.store import FaissStore
from retriever import score_context
from retriever.cli import main
from tests.retriever.test_server_hardening import index_dir  # noqa: F401


def test_context_is_the_brute_force_nearest_neighbour_scores(tmp_path):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(300, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    store = FaissStore(tmp_path / "idx", dim=16)
    store.add(v, [ImageRecord(id=i + 1, path=f"{i}.tif") for i in range(300)])
    ctx = score_context.compute(store, sample=50, seed=0)
    picked = np.sort(np.random.default_rng(0).choice(np.arange(1, 301), 50, replace=False))
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(ctx.scores, np.sort(sims[picked - 1].max(axis=1)), atol=1e-5)
    # The percentile: the share of the sample at or below a score.
    assert ctx.percentile([ctx.scores[0] - 1e-3, ctx.scores[24], 1.5]).tolist() == [0.0, 50.0, 100.0]
    # Kept beside the index, and recomputed once the index has other ids.
    first = score_context.load_or_compute(store, tmp_path / "idx")
    assert (tmp_path / "idx" / score_context.CONTEXT_FILE).is_file()
    again = score_context.load_or_compute(store, tmp_path / "idx")
    assert again.fingerprint == first.fingerprint and np.array_equal(again.scores, first.scores)
    store.add(v[:1] * 1.0, [ImageRecord(id=999, path="dup.tif")])  # a duplicate of id 1
    fresh = score_context.load_or_compute(store, tmp_path / "idx")
    assert fresh.fingerprint != first.fingerprint and fresh.fingerprint.startswith("301:")


def _run(args):
    r = CliRunner().invoke(main, ["query", *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_query_output_has_each_hits_percentile(index_dir):  # noqa: F811
    store = FaissStore(index_dir, read_only=True)
    ids = sorted(store.ids())
    ctx = score_context.load_or_compute(store, index_dir)
    assert ctx.summary()["n"] == len(ids)  # fewer images than the sample: every image is in it
    args = ["--index", str(index_dir), "--id", str(ids[0]), "--id", str(ids[5]), "-k", "4"]
    rows = json.loads(_run([*args, "--format", "json"]))
    assert len(rows) == 8
    for r in rows:
        assert r["percentile"] == pytest.approx(float(ctx.percentile([r["score"]])[0]), abs=0.051)
        assert 0 <= r["percentile"] <= 100
    assert rows[0]["percentile"] == 100.0  # the query itself, score 1.0: above every nearest neighbour
    # Before: no percentile anywhere. After: in the CSV's header and rows, and the table's.
    table = list(csv.DictReader(io.StringIO(_run([*args, "--format", "csv"]))))
    assert [float(t["percentile"]) for t in table] == [r["percentile"] for r in rows]
    text = _run(args)
    header = next(line for line in text.splitlines() if line.strip().startswith("rank"))
    assert header.split()[:3] == ["rank", "score", "percentile"]
    assert f"{rows[1]['score']:.4f}  {rows[1]['percentile']:.0f}" in text
