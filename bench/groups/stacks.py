"""Peak RSS of a build of multi-page stacks, by planes per stack, each in a fresh process, one run.

A stack's planes stream through a plane budget shared by all files (``indexer/ingest/stream.py``): the
peak should not grow with the planes per file. Each build indexes ``stacks`` random 16 x 16 uint8 stacks
with the shipped tiny model (224 px: 200 KB per prepared plane) through ``mae-index build``, as a user
runs it, and reads the child's peak RSS:

    python -m bench run stacks --set planes=10,300,900
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import REPO, Result
from bench.measure import run_child


@dataclass(frozen=True)
class Params:
    """``planes``: planes per stack, comma-separated; ``stacks``: files per build; ``batch_size`` and
    ``workers``: the build's (its budget is max(2 x batch, 4 x workers) planes)."""

    planes: str = "10,300,900"
    stacks: int = 4
    batch_size: int = 16
    workers: int = 2


QUICK = Params(planes="10,200", stacks=2)


def write_stacks(folder: Path, stacks: int, planes: int) -> None:
    """``stacks`` TIFF stacks of ``planes`` random 16 x 16 uint8 pages in ``folder``."""
    import numpy as np
    import tifffile

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(stacks):
        pixels = rng.integers(0, 255, (planes, 16, 16), dtype=np.uint8)
        tifffile.imwrite(folder / f"stack{i}.tif", pixels, photometric="minisblack", metadata=None)


def run(p: Params) -> Iterator[Result]:
    """Each plane count's build in a fresh process: seconds, planes/s and peak RSS; then the ratio."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
    }
    model = REPO / "examples" / "models" / "mae-tiny-bbbc006"
    peaks = []
    for planes in [int(s) for s in p.planes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="mae-bench-stacks-") as tmp:
            write_stacks(Path(tmp) / "data", p.stacks, planes)
            cmd = [sys.executable, "-m", "indexer.cli", "build", str(Path(tmp) / "data"), "--index",
                   str(Path(tmp) / "idx"), "--model", str(model), "--device", "cpu", "--workers", str(p.workers),
                   "--batch-size", str(p.batch_size), "--no-progress", "--format", "json"]  # fmt: skip
            child = run_child(cmd, env=env)
        if child.exit_code != 0:
            raise RuntimeError(f"the build of {planes}-plane stacks failed: {child.stderr_tail}")
        indexed = json.loads(child.stdout)["indexed"]
        case, at = (
            f"{p.stacks} stacks of {planes} planes",
            {"planes": planes, "stacks": p.stacks, "indexed": indexed},
        )
        yield Result(case, "seconds", child.seconds, "s", at)
        yield Result(case, "throughput", indexed / child.seconds, "img/s", at)
        yield Result(case, "peak_rss", child.peak_rss_mb, "MB", at)
        peaks.append((planes, child.peak_rss_mb))
    if len(peaks) >= 2:
        (a, pa), (b, pb) = peaks[0], peaks[-1]
        yield Result(f"{b} / {a} planes per stack (target <= 1.25)", "peak_rss_ratio", pb / pa, "x")
