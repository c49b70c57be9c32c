"""Benchmark 3: peak RSS of a build of 1k vs 10k images, each in a fresh process, one run.

Images are distinct variants of the real BBBC006 images made on read (nothing held in memory), so the
numbers show what the pipeline itself keeps: it should not grow with the data set.

    python bench/bench_memory.py --sizes 1000,10000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(n: int, model: str, checkpoint_every: int) -> None:
    from bench.bench_build import make_model
    from bench.common import lazy_items
    from indexer.core.config import BuildConfig, ModelConfig, SourceConfig
    from indexer.ingest.local import build_index
    from indexer.model.encoder import ViTMAEEncoder
    from indexer.stores.faiss.store import FaissStore

    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-m-"))
    encoder = ViTMAEEncoder(ModelConfig(name=str(make_model(model, tmp / "model")), device="cpu"))
    items = lazy_items(n)
    cfg = BuildConfig(sources=SourceConfig(paths=(tmp,)), index_dir=tmp / "idx", model=encoder.config,
                      batch_size=16, workers=2, flush_every=checkpoint_every)  # fmt: skip
    store = FaissStore(tmp / "idx", dim=encoder.dim)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    summary = build_index(cfg, [store], encoder=encoder, items=items)
    store.close()
    out = {
        "n": n,
        "indexed": summary.indexed,
        "seconds": round(time.perf_counter() - t0, 1),
        "images_per_s": round(summary.indexed / (time.perf_counter() - t0), 1),
        "write_seconds": round(summary.stage_seconds.get("write", 0.0), 2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_build_mb": rss_before / 1024,
    }
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--model", choices=["test", "tiny"], default="test")
    ap.add_argument("--checkpoint-every", type=int, default=512, help="The build's checkpoint interval.")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.model, args.checkpoint_every)
        return
    from bench.common import print_table

    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        p = subprocess.run([sys.executable, __file__, "--child", str(n), "--model", args.model,
                            "--checkpoint-every", str(args.checkpoint_every)],
                           capture_output=True, text=True, check=True)  # fmt: skip
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    rows = [(r["n"], r["indexed"], r["seconds"], r["images_per_s"], r["write_seconds"],
             f"{r['rss_before_build_mb']:.0f}", f"{r['peak_rss_mb']:.0f}") for r in results]  # fmt: skip
    print_table(f"Peak RSS of a build (model={args.model}, checkpoint every {args.checkpoint_every})", rows,
                ("images", "indexed", "seconds", "images/s", "write s", "RSS before build MB", "peak RSS MB"))  # fmt: skip
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(
            f"\npeak RSS {b['n']} / {a['n']} images = {b['peak_rss_mb'] / a['peak_rss_mb']:.3f}   (target <= 1.15); "
            f"throughput {b['images_per_s'] / a['images_per_s']:.3f}   (target >= 0.9)"
        )


if __name__ == "__main__":
    main()
