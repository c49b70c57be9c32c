"""Thumbnails of large images are made strip by strip: the same PNG, without the whole plane in memory."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from indexer.core.config import IntensityConfig
from indexer.images.decode import content_id, plane_id
from retriever import explorer, render

REPO = Path(__file__).resolve().parents[2]


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
    y, x = np.ogrid[0:h, 0:w]
    top = 255 if dtype == np.uint8 else 3000
    img = np.sin(x / np.float32(37.0)) * np.cos(y / np.float32(23.0))
    img += rng.standard_normal((h, w), dtype=np.float32) / 20
    return np.clip((img + 1) * (top / 2), 0, top).astype(dtype)


def _write_big(path) -> None:
    """An 8000 x 8000 16-bit deflate TIFF in 16-row strips, written by a child process: making it here
    would raise this process's peak RSS, which later tests' children inherit (vfork) and measure."""
    code = (
        "import sys, numpy as np, tifffile; from tests.retriever.test_thumbnails import _image; "
        "tifffile.imwrite(sys.argv[1], _image(8000, 8000), compression='zlib', "
        "compressionargs={'level': 1}, rowsperstrip=16, photometric='minisblack')"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=REPO, timeout=300)


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
    _write_big(path)
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


def test_a_pyramid_tiff_thumbnail_reads_its_smallest_fitting_level(tmp_path):
    """Before: a fixed-window thumbnail of a 4096 x 4096 pyramidal TIFF decoded the full level (32 MB).
    After: its 256 x 256 SubIFD alone; a percentile window still reads the full plane (its histogram)."""
    full = _image(4096, 4096)
    levels = [full[::4, ::4].copy(), full[::16, ::16].copy()]  # 1024 and 256 a side
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(full, subifds=2, compression="zlib", tile=(256, 256), photometric="minisblack")
        for level in levels:
            tw.write(level, subfiletype=1, compression="zlib", tile=(256, 256), photometric="minisblack")
    image_id, size_mb = content_id(path.read_bytes()), path.stat().st_size / 2**20
    fixed = IntensityConfig(mode="fixed", window=(100, 2500))
    renderer = explorer.Renderer(_Paths({image_id: str(path)}), fixed, explorer.ImageCache())
    tracemalloc.start()
    try:
        png, problem = renderer.png(image_id, 160)
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert problem is None
    np.testing.assert_array_equal(_pixels(png), _pixels(render.render_png(levels[1], fixed, 160)))
    assert _pixels(png).shape == (128, 128) and peak_mb - size_mb < 4, (peak_mb, size_mb)
    assert _pixels(renderer.png(image_id, 1000)[0]).shape == (512, 512)  # the 1024 level, halved
    by_percentile = explorer.Renderer(_Paths({image_id: str(path)}), IntensityConfig(), explorer.ImageCache())
    want = _pixels(render.render_png(full, IntensityConfig(), 160))
    assert np.abs(_pixels(by_percentile.png(image_id, 160)[0]).astype(int) - want).max() <= 1
