"""What must not grow with the number of images: listings per build, index rewrites per checkpoint."""

import numpy as np

import indexer.build.plan as plan_module
from indexer.build.jobs import run_build
from indexer.config import BuildConfig, ModelConfig, SourceConfig
from indexer.stores.base import ImageRecord
from indexer.stores.faiss_store import INDEX, FaissStore


def test_a_build_lists_its_sources_once(real_subset, tmp_path, tiny_model_dir, monkeypatch):
    calls = []
    real = plan_module.iter_sources

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(plan_module, "iter_sources", counting)
    config = BuildConfig(sources=SourceConfig(paths=(real_subset,)), index_dir=tmp_path / "idx",
                         model=ModelConfig(name=str(tiny_model_dir), device="cpu"), progress=False)  # fmt: skip
    summary = run_build(config, progress=False)
    assert summary.indexed == 6 and summary.found == 6
    assert len(calls) == 1  # the listing for the progress bar is the one the build uses


def test_a_checkpoint_writes_its_rows_not_the_whole_index(tmp_path, monkeypatch):
    """Before: every flush rewrote index.faiss (O(N) each, O(N^2) per build); now the snapshot is
    written once, when the writer closes, and a flush writes one shard and the state file."""
    import faiss

    writes = []
    real = faiss.write_index

    def counting(index, path):
        writes.append(index.ntotal)
        return real(index, path)

    monkeypatch.setattr(faiss, "write_index", counting)
    store = FaissStore(tmp_path, dim=8)
    rng = np.random.default_rng(0)
    for batch in range(5):
        v = rng.normal(size=(100, 8)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.add(v, [ImageRecord(id=batch * 100 + i, path=f"{batch}-{i}.tif") for i in range(100)])
        store.flush()
    assert writes == [] and not (tmp_path / INDEX).exists()
    store.close()
    assert writes == [500]
    # a reader finds every row (the snapshot covers all five shards)
    assert FaissStore(tmp_path, read_only=True).count() == 500
