"""A real ``mae-search serve`` under 8 clients keeps its memory flat (the short version of
``python -m bench run server_rss``, which runs 10 minutes)."""

from __future__ import annotations

import pytest

from bench.server_load import run_load
from tests.retriever.test_server_hardening import index_dir  # noqa: F401 (the module's built index)
from tests.support.serve import start_serve


@pytest.mark.slow
def test_rss_stays_flat_under_8_clients(index_dir, real_images):  # noqa: F811
    proc, port = start_serve(index_dir)
    try:
        from indexer.stores.faiss.store import FaissStore

        ids = [int(i) for i in FaissStore(index_dir, read_only=True).ids()]
        blobs = [p.read_bytes() for p in real_images]
        result = run_load(port, proc.pid, seconds=40, blobs=blobs, ids=ids, clients=8, warmup=15)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert result["errors"] == 0 and result["requests"] > 200, result["requests"]
    assert result["growth"] < 0.10, (
        f"RSS grew {result['growth']:.1%}: {[r // 2**20 for _, r in result['samples']]} MB"
    )
