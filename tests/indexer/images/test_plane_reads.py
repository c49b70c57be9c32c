"""Issue 31, item 8: one plane of a stack is read from its own page, not by decoding the whole stack."""

from __future__ import annotations

import tracemalloc

import numpy as np
import tifffile

from indexer.images.sources import load_image


def test_one_plane_of_a_200_plane_stack_decodes_one_page(tmp_path):
    stack = np.arange(200 * 256 * 256, dtype=np.uint16).reshape(200, 256, 256)  # 25 MB decoded
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "ZYX"}, photometric="minisblack", compression="zlib")
    tracemalloc.start()
    try:
        image = load_image(f"{path}#137")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(image, stack[137])
    # The file's bytes, one 128 KB plane and tifffile's headers; b690aef held the 25 MB stack on top.
    assert peak - path.stat().st_size < 2 * 2**20, (peak, path.stat().st_size)
