"""Shared helpers of the benchmarks: distinct in-memory BBBC006-like images and small timers."""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile

from indexer.bbbc006.names import parse_path
from indexer.images.decode import decode_tiff
from indexer.images.sources import SourceItem

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = REPO / "examples" / "bbbc006" / "BBBC006_v1_images_z_16"
if not REAL_DIR.is_dir():
    REAL_DIR = REPO.parent / "shared" / "bbbc006" / "BBBC006_v1_images_z_16"


def real_images() -> list[np.ndarray]:
    """The shipped real BBBC006 images, decoded."""
    return [decode_tiff(p.read_bytes()) for p in sorted(REAL_DIR.glob("*.tif"))]


def variant(base: np.ndarray, i: int) -> np.ndarray:
    """A distinct image: a real one rolled by a few pixels, with one pixel set to ``i`` (unique bytes)."""
    out = np.roll(base, shift=(i % 7, (i // 7) % 11), axis=(0, 1)).copy()
    out[0, 0] = i % 4096
    out[0, 1] = (i // 4096) % 4096
    return out


def encode(image: np.ndarray, lzw: bool = True) -> bytes:
    """TIFF bytes like BBBC006's (LZW, 11 rows per strip), or uncompressed (fast to make)."""
    buf = io.BytesIO()
    kw = {"compression": "lzw", "rowsperstrip": 11} if lzw else {}
    tifffile.imwrite(buf, image, photometric="minisblack", **kw)
    return buf.getvalue()


def encoded_items(n: int, lzw: bool = True) -> list[SourceItem]:
    """``n`` distinct LZW TIFFs held in memory as source items (real decode cost, no disk)."""
    bases = real_images()
    items = []
    for i in range(n):
        data = encode(variant(bases[i % len(bases)], i), lzw)
        path = f"mem/BBBC006_v1_images_z_16/mcf-z-stacks-03212011_a{1 + i % 24:02d}_s1_w2{i:08x}-0000-0000-0000-000000000000.tif"
        items.append(SourceItem(path, (lambda d=data: d), parse_path(path)))
    return items


def lazy_items(n: int) -> list[SourceItem]:
    """``n`` distinct items whose bytes are made on read (nothing held in memory but the bases)."""
    bases = real_images()
    items = []
    for i in range(n):
        path = f"mem/BBBC006_v1_images_z_16/img{i:06d}.tif"
        items.append(
            SourceItem(path, (lambda i=i: encode(variant(bases[i % len(bases)], i), False)), parse_path(path))
        )
    return items


def best_of(fn: Callable[[], object], repeat: int = 1) -> float:
    """Fastest wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@contextmanager
def redis_url(given: str | None = None, prefix: str = "mae-bench-redis-") -> Iterator[str]:
    """The Redis URL a benchmark runs against: ``given`` as it is, or a private Redis Stack server on a
    free port (tests/support/redis_server.py) in a temporary data folder, stopped and removed on exit.

    Raises
    ------
    StoreUnavailableError
        The private server could not start (install it with ``scripts/redis-stack.sh install``).
    """
    if given is not None:
        yield given
        return
    from tests.support.redis_server import RedisServer

    with (
        tempfile.TemporaryDirectory(prefix=prefix) as data_dir,
        RedisServer(port=0, data_dir=data_dir) as server,
    ):
        yield server.url


def synth_plate(out: Path, wells: str, z: str, seed: int = 0) -> Path:
    """Write a synthetic BBBC006 look-alike of ``wells`` x ``z`` (``mae-index synth``) into ``out``."""
    from indexer.cli import main as index_main

    index_main(["synth", str(out), "--wells", wells, "--z", z, "--seed", str(seed)], standalone_mode=False)
    return out


def build_real_index(index: Path) -> Path:
    """An index of the shipped real images built with the shipped tiny model (``mae-index build``).

    Raises
    ------
    RuntimeError
        The build failed; the message carries its output.
    """
    from click.testing import CliRunner

    from indexer.cli import main as index_main

    model = REPO / "examples" / "models" / "mae-tiny-bbbc006"
    r = CliRunner().invoke(index_main, ["build", str(REAL_DIR), "--index", str(index), "--model", str(model),
                                        "--device", "cpu", "--no-progress"])  # fmt: skip
    if r.exit_code != 0:
        raise RuntimeError(f"mae-index build failed: {r.output}")
    return index
