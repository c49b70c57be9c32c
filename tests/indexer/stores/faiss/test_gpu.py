"""The GPU copy of the FAISS index is used only where it gives the CPU index's answers.

This machine's faiss has no GPU support, so the copy is made by a stand-in ``clone``: a real CPU clone
(must be accepted and used), one that raises as a wheel without kernels for the card does, and one that
answers wrongly (both must fall back to the CPU index with a warning).
"""

import logging

import faiss
import numpy as np
import pytest

from indexer.core.records import ImageRecord, MetadataFilter
from indexer.stores.faiss.gpu import faiss_gpu_count, gpu_search_index
from indexer.stores.faiss.index import SearchIndex
from indexer.stores.faiss.store import FaissStore


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s = FaissStore(tmp_path / "idx", dim=16)
    s.add(v, [ImageRecord(id=i + 1, path=f"p{i}.tif", well="A01" if i % 2 else "B02") for i in range(50)])
    s.flush()
    return s, v


def _no_kernels(faiss_module, index):
    raise RuntimeError("CUDA error 209 no kernel image is available for execution on the device")


def _wrong_answers(faiss_module, index):
    wrong = faiss.IndexIDMap2(faiss.IndexFlatIP(index.d))
    wrong.add_with_ids(np.eye(index.d, dtype=np.float32), np.arange(100, 100 + index.d, dtype=np.int64))
    return wrong


def test_faiss_cpu_has_no_gpu_and_searches_stay_on_the_cpu(store):
    s, v = store
    assert faiss_gpu_count(faiss) == 0
    assert s.search_index.unfiltered_index() is s.search_index.faiss_index
    assert [h.id for h in s.search(v[3], 1)[0]] == [4]


def test_a_working_copy_is_used_for_unfiltered_searches_only(store):
    s, v = store
    index = s.search_index
    copy = index.unfiltered_index(clone=lambda f, index: faiss.clone_index(index))
    assert copy is not index.faiss_index and copy.ntotal == 50
    hits = s.search(v[:5], 3)
    assert [h[0].id for h in hits] == [1, 2, 3, 4, 5]
    filtered = s.search(v[3], 3, where=MetadataFilter(well=("A01",)))
    assert len(filtered[0]) == 3 and all(h.record.well == "A01" for h in filtered[0])
    s.add(v[:1], [ImageRecord(id=99, path="new.tif")])  # a write drops the copy; the next search re-checks
    assert index.unfiltered_index() is index.faiss_index


@pytest.mark.parametrize("clone", [_no_kernels, _wrong_answers])
def test_a_failing_or_wrong_gpu_copy_falls_back_to_the_cpu_with_a_warning(store, clone, caplog):
    s, v = store
    with caplog.at_level(logging.WARNING, logger="indexer.stores.faiss.gpu"):
        assert s.search_index.unfiltered_index(clone=clone) is s.search_index.faiss_index
    assert "searching on the CPU" in caplog.text
    assert [h.id for h in s.search(v[7], 1)[0]] == [8]


def test_a_search_index_from_arrays_uses_a_working_copy_until_it_changes():
    """The search index on its own, from ``(ids, vectors)``: no folder, no store."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=(40, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = SearchIndex.from_vectors("Flat", np.arange(100, 140), v)
    copy = index.unfiltered_index(clone=lambda f, cpu: faiss.clone_index(cpu))
    assert copy is not index.faiss_index and index.unfiltered_index() is copy
    scores, ids = index.search(v[:3], 2, None, 40, {})
    assert ids[:, 0].tolist() == [100, 101, 102] and np.allclose(scores[:, 0], 1.0, atol=1e-6)
    index.remove(np.array([101]))
    assert index.unfiltered_index() is index.faiss_index and index.ntotal == 39
    assert index.search(v[1:2], 1, np.array([105, 106]), 39, {})[1][0, 0] in (105, 106)


def test_an_empty_index_is_never_copied():
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(4))
    assert gpu_search_index(faiss, index, np.zeros((0, 4), np.float32), clone=_no_kernels) is None
