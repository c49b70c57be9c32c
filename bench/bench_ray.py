"""`--engine ray` vs the local build, same images, same model, same 2 cores, one run.

mae-index synth runs/heldout --wells I01:P12 --sites 1,2 --channels 2 --z 16 --seed 0
python bench/bench_ray.py runs/heldout --model examples/models/mae-tiny-bbbc006
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
from indexer.config import BuildConfig, ModelConfig, SourceConfig  # noqa: E402
from indexer.encoder import ViTMAEEncoder  # noqa: E402
from indexer.pipeline import build_index  # noqa: E402
from indexer.ray_build import RayConfig, run_ray_build  # noqa: E402
from indexer.stores.faiss_store import FaissStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    import ray

    cores = os.cpu_count()
    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-ray-"))
    enc = ViTMAEEncoder(ModelConfig(name=args.model, device="cpu"))

    def config(idx):
        return BuildConfig(sources=SourceConfig(paths=(args.data,)), index_dir=idx, model=enc.config,
                           batch_size=args.batch_size, workers=2)  # fmt: skip

    local = build_index(config(tmp / "local"), [FaissStore(tmp / "local", dim=enc.dim)], encoder=enc)
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    on_ray = run_ray_build(config(tmp / "ray"), RayConfig(), [FaissStore(tmp / "ray", dim=enc.dim)], enc)
    ray.shutdown()
    n = local.indexed
    assert on_ray.indexed == n
    rows = [
        ("local build", f"{local.seconds:.1f}", f"{n / local.seconds:.1f}", "1.00"),
        ("ray build (runtime already up)", f"{on_ray.seconds:.1f}", f"{n / on_ray.seconds:.1f}",
         f"{local.seconds / on_ray.seconds:.2f}"),
        ("ray build + ray.init", f"{on_ray.seconds + t_init:.1f}", f"{n / (on_ray.seconds + t_init):.1f}",
         f"{local.seconds / (on_ray.seconds + t_init):.2f}"),
    ]  # fmt: skip
    print_table(
        f"{n} images, {Path(args.model).name}, {cores} cores", rows, ("engine", "seconds", "img/s", "x local")
    )
    print(f"\nray / local throughput = {local.seconds / on_ray.seconds:.2f}   (target >= 0.80)")


if __name__ == "__main__":
    main()
