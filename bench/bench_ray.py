"""`--engine ray` vs the local build, same images, same model, same 2 cores, one run.

A Ray build pays a fixed start (worker processes import torch and transformers and load the model)
before its steady rate; a second Ray build of a small subset measures that start, so the table also
shows the steady-rate ratio and the plate size from which Ray reaches 0.8x the local build.

    mae-index synth runs/big --wells A01:P24 --sites 1,2 --channels 2 --z 16 --seed 1
    mae-index synth runs/big2 --wells A01:P24 --sites 1,2 --channels 1,2 --z 16 --seed 2
    python bench/bench_ray.py runs/big runs/big2 --model examples/models/mae-tiny-bbbc006
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table  # noqa: E402
from indexer.core.config import BuildConfig, ModelConfig, SourceConfig  # noqa: E402
from indexer.ingest.local import build_index  # noqa: E402
from indexer.ingest.ray_engine import RayConfig, run_ray_build  # noqa: E402
from indexer.model.encoder import ViTMAEEncoder  # noqa: E402
from indexer.stores.faiss.store import FaissStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, nargs="+")
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--small", type=int, default=64, help="images in the subset that measures the start")
    ap.add_argument("--concurrency", type=int, default=None, help="embedding actors (default: one per CPU)")
    ap.add_argument("--threads-per-worker", type=int, default=None)
    args = ap.parse_args()
    import ray

    cores = os.cpu_count()
    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-ray-"))
    enc = ViTMAEEncoder(ModelConfig(name=args.model, device="cpu"))
    small = tmp / "small" / "BBBC006_v1_images_z_16"
    small.mkdir(parents=True)
    for p in sorted(args.data[0].rglob("*.tif"))[: args.small]:
        (small / p.name).symlink_to(p.resolve())

    def config(data, idx):
        return BuildConfig(sources=SourceConfig(paths=tuple(data)), index_dir=idx, model=enc.config,
                           batch_size=args.batch_size, workers=2)  # fmt: skip

    local = build_index(
        config(args.data, tmp / "local"), [FaissStore(tmp / "local", dim=enc.dim)], encoder=enc
    )
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    rc = RayConfig(concurrency=args.concurrency, threads_per_worker=args.threads_per_worker)
    start = run_ray_build(config([small.parent], tmp / "ray-small"), rc,
                          [FaissStore(tmp / "ray-small", dim=enc.dim)], enc)  # fmt: skip
    on_ray = run_ray_build(config(args.data, tmp / "ray"), rc, [FaissStore(tmp / "ray", dim=enc.dim)], enc)
    actors, threads = rc.actors_and_threads(ray.cluster_resources())
    ray.shutdown()
    n, n0 = local.indexed, start.indexed
    assert on_ray.indexed == n and n0 == args.small
    # fixed start + n / steady rate, fitted on the two Ray runs
    per_image = (on_ray.seconds - start.seconds) / (n - n0)
    fixed = start.seconds - n0 * per_image
    local_rate, steady = n / local.seconds, 1 / per_image
    breakeven = (
        0.8 * fixed / (1 / local_rate - 0.8 * per_image) if 1 / local_rate > 0.8 * per_image else float("inf")
    )
    rows = [
        ("local build", n, f"{local.seconds:.1f}", f"{local_rate:.1f}", "1.00"),
        ("ray build (runtime up)", n, f"{on_ray.seconds:.1f}", f"{n / on_ray.seconds:.1f}",
         f"{local.seconds / on_ray.seconds:.2f}"),
        ("ray build + ray.init", n, f"{on_ray.seconds + t_init:.1f}", f"{n / (on_ray.seconds + t_init):.1f}",
         f"{local.seconds / (on_ray.seconds + t_init):.2f}"),
        ("ray build, small subset", n0, f"{start.seconds:.1f}", f"{n0 / start.seconds:.1f}", ""),
        ("ray steady rate (fitted)", "", "", f"{steady:.1f}", f"{steady / local_rate:.2f}"),
    ]  # fmt: skip
    print_table(f"{Path(args.model).name}, {cores} cores, Ray: {actors} embedding actors x {threads} threads",
                rows, ("engine", "images", "seconds", "img/s", "x local"))  # fmt: skip
    print(f"\nray / local throughput = {local.seconds / on_ray.seconds:.2f} on {n} images   (target >= 0.80)")
    print(f"ray fixed start = {fixed:.1f} s; steady rate = {steady / local_rate:.2f} x local; "
          f"ray reaches 0.8 x local from {breakeven:.0f} images")  # fmt: skip
    print(f"ray stage seconds (summed over workers): {on_ray.stage_seconds}")


if __name__ == "__main__":
    main()
