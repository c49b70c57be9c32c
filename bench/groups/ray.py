"""`--engine ray` vs the local build, same images, same model, same cores, one run.

A Ray build pays a fixed start (worker processes import torch and transformers and load the model)
before its steady rate; a second Ray build of a small subset measures that start, so the rows also
give the steady-rate ratio and the plate size from which Ray reaches 0.8x the local build.

    mae-index synth runs/big --wells A01:P24 --sites 1,2 --channels 2 --z 16 --seed 1
    mae-index synth runs/big2 --wells A01:P24 --sites 1,2 --channels 1,2 --z 16 --seed 2
    python -m bench run ray --set data=runs/big,runs/big2

Without ``data``, a synthetic plate of ``wells`` x ``z`` is written first.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO, synth_plate
from bench.harness import Result


@dataclass(frozen=True)
class Params:
    """``data``: folders, comma-separated (empty: synthesize ``wells`` x ``z``); ``small``: images in
    the subset that measures the start; ``concurrency``: embedding actors (0: one per CPU);
    ``threads_per_worker`` (0: Ray's share)."""

    data: str = ""
    wells: str = "A01:P24"
    z: str = "16"
    model: str = str(REPO / "examples" / "models" / "mae-tiny-bbbc006")
    batch_size: int = 16
    small: int = 64
    concurrency: int = 0
    threads_per_worker: int = 0


QUICK = Params(wells="A01:A12", z="16", small=16)


def run(p: Params) -> Iterator[Result]:
    """Seconds and images/s of each build; Ray's fixed start, steady rate and break-even plate size."""
    import ray

    from indexer.core.config import BuildConfig, ModelConfig, SourceConfig
    from indexer.ingest.local import build_index
    from indexer.ingest.ray_engine import RayConfig, run_ray_build
    from indexer.model.encoder import ViTMAEEncoder
    from indexer.stores.faiss.store import FaissStore

    cores = os.cpu_count()
    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-ray-"))
    data = [Path(d) for d in p.data.split(",")] if p.data else [synth_plate(tmp / "data", p.wells, p.z)]
    enc = ViTMAEEncoder(ModelConfig(name=p.model, device="cpu"))
    small = tmp / "small" / "BBBC006_v1_images_z_16"
    small.mkdir(parents=True)
    for path in sorted(data[0].rglob("*.tif"))[: p.small]:
        (small / path.name).symlink_to(path.resolve())

    def config(folders, idx):
        return BuildConfig(sources=SourceConfig(paths=tuple(folders)), index_dir=idx, model=enc.config,
                           batch_size=p.batch_size, workers=2)  # fmt: skip

    local = build_index(config(data, tmp / "local"), [FaissStore(tmp / "local", dim=enc.dim)], encoder=enc)
    t0 = time.perf_counter()
    # address="local": a private runtime, never a cluster another process on this machine started
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    rc = RayConfig(concurrency=p.concurrency or None, threads_per_worker=p.threads_per_worker or None)
    try:
        start = run_ray_build(config([small.parent], tmp / "ray-small"), rc,
                              [FaissStore(tmp / "ray-small", dim=enc.dim)], enc)  # fmt: skip
        on_ray = run_ray_build(config(data, tmp / "ray"), rc, [FaissStore(tmp / "ray", dim=enc.dim)], enc)
        actors, threads = rc.actors_and_threads(ray.cluster_resources())
    finally:
        ray.shutdown()
    n, n0 = local.indexed, start.indexed
    assert on_ray.indexed == n and n0 == min(p.small, n)
    # fixed start + n / steady rate, fitted on the two Ray runs
    per_image = (on_ray.seconds - start.seconds) / (n - n0)
    fixed = start.seconds - n0 * per_image
    local_rate, steady = n / local.seconds, 1 / per_image
    at = {"images": n, "cores": cores, "actors": actors, "threads_per_actor": threads}
    builds = {"local build": local.seconds, "ray build (runtime up)": on_ray.seconds,
              "ray build + ray.init": on_ray.seconds + t_init}  # fmt: skip
    for case, seconds in builds.items():
        yield Result(case, "seconds", seconds, "s", at)
        yield Result(case, "throughput", n / seconds, "img/s", at)
        yield Result(case, "vs_local", local.seconds / seconds, "x", at)
    yield Result("ray build, small subset", "seconds", start.seconds, "s", {**at, "images": n0})
    yield Result("ray steady rate (fitted)", "throughput", steady, "img/s", at)
    yield Result("ray steady rate (fitted)", "vs_local", steady / local_rate, "x", at)
    yield Result("ray fixed start (fitted)", "seconds", fixed, "s", at)
    if 1 / local_rate > 0.8 * per_image:  # otherwise Ray never reaches 0.8 x local
        yield Result(
            "ray reaches 0.8 x local from", "images", 0.8 * fixed / (1 / local_rate - 0.8 * per_image), "", at
        )
    for stage, seconds in on_ray.stage_seconds.items():
        yield Result("ray build (summed over workers)", "stage_seconds", seconds, "s", {"stage": stage})
