"""Per-image CPU cost of the steps around the model, one thread, on the 20 real BBBC006 images.

Decoding with tifffile's own strip loop vs libtiff (what `decode_tiff` uses), and the torch
preprocessing (intensity window, resize to 224, normalise), each the median over repeats.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bench.common import REAL_DIR
from bench.harness import Result


@dataclass(frozen=True)
class Params:
    """``repeats``: passes over the images, the median kept."""

    repeats: int = 5


QUICK = Params(repeats=2)


def per_image_ms(fn, items, repeats: int) -> float:
    """Median over ``repeats`` passes of the mean milliseconds per item."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - t0) / len(items))
    return float(np.median(times)) * 1000


def run(p: Params) -> Iterator[Result]:
    """Milliseconds per image of hashing, both decoders and preprocessing; the decoders' speed ratio."""
    import tifffile
    import torch

    from indexer.core.config import PreprocessConfig
    from indexer.images.decode import content_id, decode_tiff
    from indexer.model.preprocess import preprocess_image

    torch.set_num_threads(1)  # as in the build's decode workers
    blobs = [path.read_bytes() for path in sorted(REAL_DIR.glob("*.tif"))]
    images = [decode_tiff(b) for b in blobs]
    assert all(np.array_equal(tifffile.imread(io.BytesIO(b)), im) for b, im in zip(blobs, images))
    pre = PreprocessConfig(image_size=(224, 224), patch_size=16)
    steps = {
        "content hash (BLAKE2b)": (content_id, blobs),
        "decode, tifffile strip loop": (lambda b: tifffile.imread(io.BytesIO(b)), blobs),
        "decode, libtiff (decode_tiff)": (decode_tiff, blobs),
        "preprocess to 3x224x224": (lambda im: preprocess_image(im, pre), images),
    }
    ms = {}
    for case, (fn, items) in steps.items():
        ms[case] = per_image_ms(fn, items, p.repeats)
        yield Result(case, "per_image", ms[case], "ms", {"images": len(items)})
    speedup = ms["decode, tifffile strip loop"] / ms["decode, libtiff (decode_tiff)"]
    yield Result("libtiff vs tifffile decode (identical pixels)", "speed_up", speedup, "x")
