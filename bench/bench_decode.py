"""Per-image CPU cost of the steps around the model, one core, on the 20 real BBBC006 images.

Decoding with tifffile's own strip loop vs libtiff (what `decode_tiff` uses), and the torch
preprocessing (intensity window, resize to 224, normalise), each the median over repeats.

    python bench/bench_decode.py
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REAL_DIR, print_table  # noqa: E402
from indexer.core.config import PreprocessConfig  # noqa: E402
from indexer.images.decode import content_id, decode_tiff  # noqa: E402
from indexer.model.preprocess import preprocess_image  # noqa: E402


def per_image_ms(fn, items, repeats: int) -> float:
    """Median over ``repeats`` passes of the mean milliseconds per item."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - t0) / len(items))
    return float(np.median(times)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in the build's decode workers
    blobs = [p.read_bytes() for p in sorted(REAL_DIR.glob("*.tif"))]
    images = [decode_tiff(b) for b in blobs]
    assert all(np.array_equal(tifffile.imread(io.BytesIO(b)), im) for b, im in zip(blobs, images))
    pre = PreprocessConfig(image_size=(224, 224), patch_size=16)
    rows = [
        ("content hash (BLAKE2b)", per_image_ms(content_id, blobs, args.repeats)),
        ("decode, tifffile strip loop", per_image_ms(lambda b: tifffile.imread(io.BytesIO(b)), blobs, args.repeats)),
        ("decode, libtiff (decode_tiff)", per_image_ms(decode_tiff, blobs, args.repeats)),
        ("preprocess to 3x224x224", per_image_ms(lambda im: preprocess_image(im, pre), images, args.repeats)),
    ]  # fmt: skip
    print_table(f"CPU ms per image, one thread, {len(blobs)} real BBBC006 images (696x520 LZW)",
                [(name, f"{ms:.2f}") for name, ms in rows], ("step", "ms"))  # fmt: skip
    print(f"\nlibtiff / tifffile decode speed-up = {rows[1][1] / rows[2][1]:.1f}x (identical pixels)")


if __name__ == "__main__":
    main()
