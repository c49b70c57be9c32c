"""Peak RSS of a FAISS store written as a build writes it, without the model: N records of DIM-d in
batches of 64, a checkpoint (flush) every 1,024, the C heap trimmed at each one as ``mae-index build``
does (``indexer.ingest.heap.release_free_memory``, which also releases pyarrow's pool; ``--no-arrow-release``
trims glibc only, as before that was added). Prints the RSS and the kernel's high-water mark over the
start, every 10,240 rows and at the end.

    python bench/store_write_memory.py --n 52224
    python bench/store_write_memory.py --n 52224 --no-arrow-release
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import rss_mb  # noqa: E402


def hwm_mb() -> float:
    """This process's peak RSS so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Write the store; print RSS and its peak over the start."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=52_224)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--no-arrow-release", action="store_true")
    args = ap.parse_args()
    import faiss  # noqa: F401  (loaded before the start is measured)
    import pyarrow.parquet  # noqa: F401

    from indexer.core.records import ImageRecord
    from indexer.ingest.heap import release_free_memory
    from indexer.stores.faiss.store import FaissStore

    def release() -> None:
        if args.no_arrow_release:
            ctypes.CDLL(None).malloc_trim(0)
        else:
            release_free_memory()

    paths = [f"/data/BBBC006_v1_images_z_{i % 34:02d}/mcf-z-stacks-03212011_a{i % 24 + 1:02d}_s{i % 2 + 1}_"
             f"w1{i:08d}-0000-0000-0000-000000000000.tif" for i in range(args.n)]  # fmt: skip
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = FaissStore(Path(tmp) / "index")
        release()
        start = rss_mb()
        print(f"start: RSS {start:.0f} MB")
        for s in range(0, args.n, 64):
            records = [ImageRecord(id=10**12 + i, path=paths[i], plate="p", well="A01", row="A", column=1, site=1,
                                   channel="w1", z=i % 34) for i in range(s, min(args.n, s + 64))]  # fmt: skip
            store.add(rng.standard_normal((len(records), args.dim)).astype(np.float32), records)
            if (s // 64) % 16 == 15:
                store.flush()
                release()
            if (s // 64) % 160 == 159:
                print(f"{s + 64} rows: RSS +{rss_mb() - start:.0f} MB, peak +{hwm_mb() - start:.0f} MB")
        store.close()
        release()
        print(f"{args.n} rows, closed: RSS +{rss_mb() - start:.0f} MB, peak +{hwm_mb() - start:.0f} MB "
              f"({(hwm_mb() - start) * 2**20 / args.n:.0f} B per row)")  # fmt: skip


if __name__ == "__main__":
    main()
