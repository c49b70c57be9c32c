"""What must not grow with the number of images: listings per build, index rewrites per checkpoint."""

import numpy as np

import indexer.ingest.plan as plan_module
from indexer.core.config import BuildConfig, ModelConfig, SourceConfig
from indexer.core.records import ImageRecord
from indexer.ingest.jobs import run_build
from indexer.stores.faiss.store import INDEX, FaissStore


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


def _bbbc006_folder(root, n_z: int, wells: int = 24) -> int:
    """Empty files with BBBC006 names (listing reads names, not bytes): ``n_z`` z folders of
    ``wells`` wells x 2 sites x 2 channels."""
    n = 0
    for z in range(n_z):
        folder = root / f"BBBC006_v1_images_z_{z:02d}"
        folder.mkdir(parents=True)
        for w in range(wells):
            well = f"{'ABCDEFGHIJKLMNOP'[w // 24]}{w % 24 + 1:02d}"
            for site in (1, 2):
                for ch in (1, 2):
                    uuid = f"{n:08x}-0193-4e11-8762-62b5d2b86216"
                    (folder / f"mcf-z-stacks-03212011_{well.lower()}_s{site}_w{ch}{uuid}.tif").touch()
                    n += 1
    return n


def test_a_listed_image_costs_a_few_hundred_bytes(tmp_path):
    """The listing is kept for the whole build (52,224 items for the full plate): each item must hold
    its path once and share the values its metadata repeats. Before: ~830 B per item besides its path
    string (a Path object with its parts behind every ``read``, a string per metadata field); now three
    small slotted objects (item, reader, metadata), ~260 B."""
    import gc
    import sys
    import tracemalloc

    from indexer.images.sources import iter_sources

    n = _bbbc006_folder(tmp_path / "data", n_z=20)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        items = list(iter_sources(SourceConfig(paths=(tmp_path / "data",))))
        gc.collect()
        per_item = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(items) == n == 1920
    assert items[0].meta.well == "A01" and items[0].meta.z == 0 and items[0].read() == b""
    path_bytes = sum(sys.getsizeof(it.path) for it in items) / n  # the path itself: needed, and held once
    assert per_item - path_bytes < 300, f"{per_item - path_bytes:.0f} B per listed image besides its path"


def test_an_open_index_holds_a_record_in_a_few_hundred_bytes(tmp_path):
    """The FAISS store keeps every record in memory while a build (or a server) runs. Before: ~545 B
    per record besides its path (a ``__dict__`` per record, a new string per metadata value read back
    from the shards); then ~265 B (a slotted record, its repeated values shared, in a dict beside an
    id -> (shard, row) dict); now 143 B: a row of the columnar record table
    (:mod:`indexer.stores.record_table`) with the id lookup's share."""
    import gc
    import sys
    import tracemalloc

    n, dim = 4000, 8
    store = FaissStore(tmp_path, dim=dim)
    rng = np.random.default_rng(0)
    for start in range(0, n, 500):
        v = rng.normal(size=(500, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.add(v, [ImageRecord(id=10**12 + i, path=f"/data/BBBC006_v1_images_z_{i % 34:02d}/img_{i:06d}.tif",
                                  plate="mcf-z-stacks-03212011", well=f"A{i % 24 + 1:02d}", row="A",
                                  column=i % 24 + 1, site=1 + i % 2, channel=f"w{1 + i % 2}", z=i % 34,
                                  source="synthetic") for i in range(start, start + 500)])  # fmt: skip
        store.flush()
    store.close()
    FaissStore(tmp_path, read_only=True)  # the modules a reader imports are not per record
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        reader = FaissStore(tmp_path, read_only=True)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert reader.count() == n
    assert reader.get([10**12 + 5])[0].well == "A06"
    vectors = n * dim * 4  # the Flat index itself
    paths = sum(sys.getsizeof(r.path) for r in reader.get(reader.ids()))
    per_record = (held - vectors - paths) / n
    assert per_record < 160, f"{per_record:.0f} B per record besides its vector and path"


def test_a_build_does_not_fault_in_fresh_pages_for_every_image(real_images):
    """Page faults per image of a second build in one process (the first loads the model and warms
    the heap). Fixing glibc's mmap threshold at 256 KiB made every buffer past it, the model's
    activations included, a fresh mapping: ~5,500 faults per image with the shipped tiny model, a
    third of the build's CPU time in the kernel and 69 -> 38 images/s at 52k. Run in a fresh process."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import resource, sys, tempfile
from pathlib import Path
from indexer.ingest.jobs import run_build
from indexer.core.config import BuildConfig, ModelConfig, SourceConfig
data, model, tmp = Path(sys.argv[1]), sys.argv[2], Path(tempfile.mkdtemp())
def build(folder):
    config = BuildConfig(sources=SourceConfig(paths=(data,)), index_dir=folder, progress=False,
                         model=ModelConfig(name=model, device="cpu", precision="fp32"))
    return run_build(config, progress=False)
build(tmp / "warm-up")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = build(tmp / "index").indexed
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n)
"""
    model = Path(__file__).resolve().parents[3] / "examples" / "models" / "mae-tiny-bbbc006"
    out = subprocess.run([sys.executable, "-c", script, str(real_images[0].parent), str(model)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    faults = float(out.stdout.split()[-1])
    assert faults < 2000, f"{faults:.0f} page faults per image"


def test_each_checkpoint_hands_freed_memory_back(real_subset, tmp_path, tiny_model_dir, monkeypatch):
    """``mae-index build`` trims the C heap once per checkpoint (6 images, batches of 2, a checkpoint every 2)."""
    import indexer.ingest.heap

    calls = []
    monkeypatch.setattr(indexer.ingest.heap, "release_free_memory", lambda: calls.append(1) or True)
    config = BuildConfig(sources=SourceConfig(paths=(real_subset,)), index_dir=tmp_path / "idx", flush_every=2, batch_size=2,
                         model=ModelConfig(name=str(tiny_model_dir), device="cpu"), progress=False)  # fmt: skip
    assert run_build(config, progress=False).indexed == 6
    assert len(calls) == 3


def test_release_free_memory_returns_a_freed_heap_middle_to_the_kernel():
    """Freed heap memory below a block still in use is not returned by ``free``; ``malloc_trim`` returns
    it. Run in a fresh process, so that nothing else shares the heap."""
    import subprocess
    import sys

    script = """
import ctypes
from indexer.ingest.heap import release_free_memory
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) / 1024
blocks = [libc.malloc(100_000) for _ in range(1000)]  # under the mmap threshold: from the heap
for b in blocks:
    ctypes.memset(b, 1, 100_000)
for b in blocks[:-1]:  # the last one stays, so the heap's top cannot shrink
    libc.free(b)
before = rss_mb()
assert release_free_memory()
print(before - rss_mb())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 50  # of the ~95 MB freed


def test_release_free_memory_returns_what_arrow_freed_to_the_kernel():
    """pyarrow allocates the shards' tables from its own pool (mimalloc), which keeps freed pages for
    reuse; ``malloc_trim`` does not see them. Fresh process; ~270 MB allocated in the pool, then freed."""
    import subprocess
    import sys

    script = """
import gc
import numpy as np
import pyarrow as pa
from indexer.ingest.heap import release_free_memory
def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) / 1024
base = [np.arange(25_000, dtype=np.float32) for _ in range(10)]
arrays = [pa.array(base[i % 10]).cast(pa.float64()) for i in range(1000)]  # 200 KB each, in arrow's pool
del arrays
gc.collect()
before = rss_mb()
assert release_free_memory()
print(pa.default_memory_pool().backend_name, before - rss_mb())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    backend, released = out.stdout.split()
    assert float(released) > 150, f"{backend} pool: {released} MB of ~200 MB handed back"


_DEFERRED_WRITER = """
import sys
import numpy as np
from indexer.core.records import ImageRecord
from indexer.stores.faiss.store import FaissStore
def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) / 1024
store = FaissStore(sys.argv[1], dim=512, defer_index=sys.argv[2] == "defer")
rng = np.random.default_rng(0)
v = rng.normal(size=(1000, 512)).astype(np.float32)
v /= np.linalg.norm(v, axis=1, keepdims=True)
store.add(v, [ImageRecord(id=i, path=f"{i}.tif") for i in range(1000)])
store.flush()
before = rss_mb()
for batch in range(1, 41):  # 40,000 vectors of 2 KB: 78 MB
    v = rng.normal(size=(1000, 512)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    store.add(v, [ImageRecord(id=batch * 1000 + i, path=f"{batch}-{i}.tif") for i in range(1000)])
    store.flush()
print(rss_mb() - before)
store.close()
"""


def test_a_build_writer_does_not_hold_every_vector_while_it_writes(tmp_path):
    """A Flat index kept up to date while writing holds every vector in memory for the whole build
    (768 B per image with the tiny model, 3 KB with ViT-B: 40 MB / 160 MB at 52k, 30 GB at 10 M). A
    build's writer (``defer_index``) keeps none: the index is built from the shards when it closes. Fresh
    processes; 40,000 512-d vectors (78 MB) written in flushed batches of 1,000."""
    import subprocess
    import sys

    grown = {}
    for mode in ("defer", "keep"):
        out = subprocess.run([sys.executable, "-c", _DEFERRED_WRITER, str(tmp_path / mode), mode],
                             capture_output=True, text=True, check=True)  # fmt: skip
        grown[mode] = float(out.stdout)
    assert grown["keep"] > 50, grown  # the kept index: every vector (78 MB)
    assert grown["defer"] < 30, grown
    for mode in ("defer", "keep"):  # the same index on disk either way
        reader = FaissStore(tmp_path / mode, read_only=True)
        assert reader.count() == 41_000
        q = reader.get_vectors([5, 20_005, 40_999])
        assert [hits[0].id for hits in reader.search(q, 1)] == [5, 20_005, 40_999]


def test_run_build_writes_its_faiss_folder_with_a_deferred_index(real_subset, tmp_path, tiny_model_dir):
    """The CLI's build opens its FAISS folder as a deferred writer; a re-run that adds images gives the
    index a fresh build would."""
    config = BuildConfig(sources=SourceConfig(paths=(real_subset,)), index_dir=tmp_path / "idx",
                         model=ModelConfig(name=str(tiny_model_dir), device="cpu"), progress=False)  # fmt: skip
    opened = []
    real_init = FaissStore.__init__

    def spy(self, *args, **kwargs):
        opened.append(kwargs.get("defer_index", False))
        real_init(self, *args, **kwargs)

    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FaissStore, "__init__", spy)
        run_build(config, progress=False)
    assert opened and opened[0] is True
    reader = FaissStore(tmp_path / "idx", read_only=True)
    ids = reader.ids()
    assert len(ids) == 6
    assert [hits[0].id for hits in reader.search(reader.get_vectors(ids), 1)] == ids.tolist()
