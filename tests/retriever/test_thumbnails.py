"""Thumbnails of large images are made strip by strip: the same PNG, without the whole plane in memory."""

from __future__ import annotations

import io
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest
import tifffile
from PIL import Image

from indexer.core.config import IntensityConfig
from indexer.images.decode import content_id, plane_id
from retriever import explorer, render


@dataclass
class _Rec:
    path: str


class _Paths:
    """The one thing a Renderer asks of its catalog: an id's record (its path)."""

    def __init__(self, paths: dict[int, str]) -> None:
        self.paths = paths

    def record(self, image_id: int) -> _Rec:
        return _Rec(self.paths[image_id])


def _image(h, w, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    top = 255 if dtype == np.uint8 else 3000
    img = top / 2 * (1 + np.sin(x / 37.0) * np.cos(y / 23.0)) + rng.normal(0, top / 40, (h, w))
    return np.clip(img, 0, top).astype(dtype)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


LAYOUTS = {
    "deflate strips": ({"compression": "zlib", "rowsperstrip": 7}, np.uint16),
    "lzw tiles": ({"compression": "lzw", "tile": (64, 48)}, np.uint16),
    "uncompressed": ({}, np.uint16),
    "uncompressed big-endian": ({"byteorder": ">"}, np.uint16),
    "8-bit": ({"compression": "zlib"}, np.uint8),
    "float": ({"compression": "zlib"}, np.float32),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("cfg", [IntensityConfig(), IntensityConfig(mode="fixed", window=(100, 2500))])
@pytest.mark.parametrize("size", [64, 160, 4096])
def test_band_thumbnail_is_the_whole_plane_thumbnail(tmp_path, layout, cfg, size):
    kwargs, dtype = LAYOUTS[layout]
    img = _image(517, 701, dtype)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, img, **kwargs)
    image_id = content_id(path.read_bytes())
    renderer = explorer.Renderer(_Paths({image_id: str(path)}), cfg, explorer.ImageCache())
    got, problem = renderer.png(image_id, size)
    assert problem is None
    want = render.render_png(img.astype(np.float32) if dtype == np.float32 else img, cfg, size)
    a, b = _pixels(got), _pixels(want)
    assert a.shape == b.shape == ((517, 701) if size == 4096 else render.downscale(img, size).shape)
    # Sums in float64 instead of float32: a block mean on a rounding edge may land one level apart.
    assert np.abs(a.astype(int) - b).max() <= 1 and (a != b).mean() < 0.01


def test_a_stack_plane_thumbnail_decodes_that_plane(tmp_path):
    stack = np.stack([_image(300, 400, seed=s) for s in range(3)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, compression="zlib", metadata={"axes": "ZYX"}, photometric="minisblack")
    file_id = content_id(path.read_bytes())
    paths = {plane_id(file_id, i): f"{path}#{i}" for i in range(3)}
    renderer = explorer.Renderer(_Paths(paths), IntensityConfig(), explorer.ImageCache())
    for i in range(3):
        png, problem = renderer.png(plane_id(file_id, i), 100)
        assert problem is None
        want = _pixels(render.render_png(stack[i], IntensityConfig(), 100))
        assert np.abs(_pixels(png).astype(int) - want).max() <= 1
    renderer.catalog.paths[plane_id(file_id, 3)] = f"{path}#3"  # no such plane: a placeholder, not a 500
    assert renderer.png(plane_id(file_id, 3), 100)[1].startswith("FileNotFoundError")


def test_a_64_megapixel_thumbnail_holds_one_band_not_the_plane(tmp_path):
    """Before: /thumb of an 8000 x 8000 16-bit deflate TIFF (82 MB) peaked at 611 MB of Python
    allocations (the file, the 128 MB plane, a 512 MB int64 copy for the histogram) in 1.5 s.
    After: the file and one 16-row strip at a time."""
    path = tmp_path / "big.tif"
    tifffile.imwrite(
        path, _image(8000, 8000), compression="zlib", compressionargs={"level": 1}, rowsperstrip=16
    )
    size_mb = path.stat().st_size / 2**20
    image_id = content_id(path.read_bytes())
    renderer = explorer.Renderer(_Paths({image_id: str(path)}), IntensityConfig(), explorer.ImageCache())
    tracemalloc.start()
    try:
        t = time.perf_counter()
        png, problem = renderer.png(image_id, 160)
        seconds = time.perf_counter() - t
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert problem is None and _pixels(png).shape == (160, 160)
    print(f"8000x8000 thumbnail: {seconds:.2f} s, peak {peak_mb:.0f} MB, file {size_mb:.0f} MB")
    assert peak_mb - size_mb < 32, (peak_mb, size_mb)
