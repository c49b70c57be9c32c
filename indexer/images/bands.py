"""One plane of a TIFF as bands of rows, decoded strip by strip (or tile row by tile row).

A thumbnail of a 64 M pixel image needs every pixel once (the index's percentile window comes from
the full-resolution histogram) but never the whole plane at once: the explorer folds each band into a
histogram and a block-sum (:func:`retriever.render.render_bands`). A plain strip or tile TIFF has no
smaller copy of the image inside it, so every strip is still decoded; what is bounded is the memory, one
band at a time. An uncompressed contiguous plane is not decoded at all: its bands are views of the
file's bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from indexer.core.limits import DecodeLimits
from indexer.images.decode import (
    DEFAULT_LIMITS,
    MIN_SIDE,
    DecodeError,
    _check_pixels,
    _unreadable,
    open_tiff,
    selected_pages,
)

#: Rows of a band cut from a contiguous (uncompressed) plane.
VIEW_ROWS = 128
#: Bytes of compressed strips read from the file in one pass.
READ_BYTES = 1 << 20

Band = tuple[int, np.ndarray, tuple[int, int]]


def iter_bands(
    data: bytes, index: int | None = None, limits: DecodeLimits | None = None, min_side: int | None = None
) -> Iterator[Band]:
    """``(first_row, band, (height, width))`` of plane ``index`` (None: a single-plane file, as
    :func:`~indexer.images.decode.decode_tiff`), top to bottom; nothing if the file has no such plane.

    With ``min_side``, a plane with a pyramid (SubIFDs) is read from its smallest level whose longer
    side is still at least ``min_side``: a truly reduced read, its height and width those of the level.

    The same checks as :func:`~indexer.images.decode.iter_planes` come first, from the header. A float
    plane is one band (decoded whole, as before: its NaN check needs every pixel).

    Raises
    ------
    DecodeError
        As :func:`~indexer.images.decode.iter_planes`.
    """
    if not data:
        raise DecodeError("empty file")
    limits = limits or DEFAULT_LIMITS
    try:
        with open_tiff(data) as tif:
            for page, i, _z, _c in selected_pages(tif, len(data), limits, index, index is None):
                level = _level(page.aspage(), min_side) if min_side else page
                yield from _page_bands(data, level, f"plane {i}: " if index is not None else "")
                return
    except DecodeError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        raise _unreadable(e) from e


def _level(page, min_side: int):
    """The smallest SubIFD of ``page`` (a reduced copy of it, as pyramidal TIFFs hold) that is one plane
    of its pixel type, no larger than it and at least ``min_side`` on its longer side; else ``page``."""
    best = page
    try:
        levels = list(page.pages or []) if page.subifds else []
    except Exception:  # damaged SubIFDs: the full plane is still there
        return page
    for level in levels:
        level = level.aspage()
        shape = tuple(level.shape)
        if (
            len(shape) == 2
            and level.dtype == page.dtype
            and shape[0] <= page.shape[0]
            and shape[1] <= page.shape[1]
            and max(shape) >= min_side
            and shape[0] * shape[1] < best.shape[0] * best.shape[1]
        ):
            best = level
    return best


def _page_bands(data: bytes, page, where: str) -> Iterator[Band]:
    page = page.aspage()  # a stack's later pages may be TiffFrames, which lack the layout tags
    h, w = (int(v) for v in page.shape)
    if page.dtype not in (np.uint8, np.uint16) or page.samplesperpixel != 1 or page.imagedepth != 1:
        yield 0, _check_pixels(page.asarray(maxworkers=1), where), (h, w)
        return
    if min(h, w) < MIN_SIDE:
        raise DecodeError(f"{where}image too small ({w}x{h}); at least {MIN_SIDE} px a side")
    dtype = np.dtype(page.dtype).newbyteorder(page.parent.byteorder)
    offset = page.dataoffsets[0] if page.dataoffsets else 0
    plain = page.compression == 1 and page.fillorder == 1 and page.bitspersample == 8 * dtype.itemsize
    if plain and page.is_contiguous and offset + h * w * dtype.itemsize <= len(data):
        plane = np.frombuffer(data, dtype, h * w, offset).reshape(h, w)  # a view: nothing decoded
        for y in range(0, h, VIEW_ROWS):
            yield y, plane[y : y + VIEW_ROWS], (h, w)
        return
    band_rows = int(page.tilelength if page.is_tiled else min(page.rowsperstrip or h, h))
    band, y0 = None, -1
    # A small read buffer: by default tifffile reads up to 256 MB of compressed strips in one go.
    for seg, pos, _shape in page.segments(maxworkers=1, buffersize=READ_BYTES):
        y, x = int(pos[2]), int(pos[3])
        if y != y0:
            if band is not None:
                yield y0, band, (h, w)
            y0 = y
            band = np.zeros((min(band_rows, h - y), w), page.dtype)  # empty segments stay 0, as tifffile's
        if seg is not None:
            part = np.asarray(seg)[0, :, :, 0]  # (depth, length, width, samples) of one segment
            rows, cols = min(part.shape[0], band.shape[0]), min(part.shape[1], w - x)
            band[:rows, x : x + cols] = part[:rows, :cols]
    if band is not None:
        yield y0, band, (h, w)
