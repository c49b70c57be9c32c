"""Benchmark 3: peak RSS of a build of 1k vs 10k images, each in a fresh process, one run.

Images are distinct variants of the real BBBC006 images made on read (nothing held in memory), so the
numbers show what the pipeline itself keeps: it should not grow with the data set.

    python -m bench run memory --set sizes=1000,10000
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import REPO, Result
from bench.measure import peak_rss


@dataclass(frozen=True)
class Params:
    """``sizes``: images per build, comma-separated; ``model``: test or tiny; ``checkpoint_every``:
    the build's checkpoint interval."""

    sizes: str = "1000,10000"
    model: str = "test"
    checkpoint_every: int = 512


QUICK = Params(sizes="128,512", checkpoint_every=128)


def child(n: int, model: str, checkpoint_every: int) -> dict:
    """Build ``n`` images in this process; what it took and this process's RSS before and at its peak."""
    from bench.common import lazy_items
    from bench.groups.build import make_model
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
    before = peak_rss().peak_mb
    t0 = time.perf_counter()
    summary = build_index(cfg, [store], encoder=encoder, items=items)
    store.close()
    seconds = time.perf_counter() - t0
    return {"n": n, "indexed": summary.indexed, "seconds": seconds, "images_per_s": summary.indexed / seconds,
            "write_seconds": summary.stage_seconds.get("write", 0.0), "peak_rss_mb": peak_rss().peak_mb,
            "rss_before_build_mb": before}  # fmt: skip


def run(p: Params) -> Iterator[Result]:
    """Each size's build in a fresh process: seconds, images/s, RSS before and peak; then the ratios."""
    results = []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
    }
    for n in [int(s) for s in p.sizes.split(",")]:
        out = subprocess.run([sys.executable, "-m", "bench.groups.memory", str(n), p.model, str(p.checkpoint_every)],
                             capture_output=True, text=True, check=True, env=env)  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        case, at = f"build of {n} images", {"images": n, "indexed": r["indexed"]}
        yield Result(case, "seconds", r["seconds"], "s", at)
        yield Result(case, "throughput", r["images_per_s"], "img/s", at)
        yield Result(case, "write_seconds", r["write_seconds"], "s", at)
        yield Result(case, "rss_before_build", r["rss_before_build_mb"], "MB", at)
        yield Result(case, "peak_rss", r["peak_rss_mb"], "MB", at)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        case = f"{b['n']} / {a['n']} images"
        yield Result(case + " (target <= 1.15)", "peak_rss_ratio", b["peak_rss_mb"] / a["peak_rss_mb"], "x")
        yield Result(
            case + " (target >= 0.9)", "throughput_ratio", b["images_per_s"] / a["images_per_s"], "x"
        )


if __name__ == "__main__":  # the fresh process of one size: python -m bench.groups.memory N MODEL EVERY
    print(json.dumps(child(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))
