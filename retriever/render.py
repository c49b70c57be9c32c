"""Render 16-bit microscopy images as 8-bit grayscale PNGs for the web explorer. numpy and zlib only.

The intensity window is the index's own (:class:`~indexer.core.config.IntensityConfig`): per-image
percentiles computed exactly as :func:`indexer.model.preprocess.histogram_quantiles` does, or the fixed or
data-set window recorded in the manifest. No torch here: the explorer renders on HTTP worker threads,
and a torch call there would start a second OpenMP pool beside the compute thread's (see
:class:`retriever.http.service.QueryService`).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable

import numpy as np

from indexer.core.config import IntensityConfig


def window(image: np.ndarray, config: IntensityConfig) -> tuple[float, float]:
    """The ``(low, high)`` counts that map to black and white, as the index's preprocessing computes them."""
    if config.mode != "percentile":
        if config.window is None:
            raise ValueError("a fixed or data-set intensity window needs its values")
        return float(config.window[0]), float(config.window[1])
    flat = image.reshape(-1)
    if not np.issubdtype(flat.dtype, np.integer):
        lo, hi = np.percentile(flat, [config.low, config.high])
        return float(lo), float(hi)
    return window_of_counts(np.bincount(flat.astype(np.int64, copy=False)), config)


def window_of_counts(counts: np.ndarray, config: IntensityConfig) -> tuple[float, float]:
    """The percentile window of an integer image from its histogram (``counts[v]``: pixels of value v)."""
    cdf = np.cumsum(counts)
    n = int(cdf[-1])
    out = []
    for q in (config.low / 100.0, config.high / 100.0):
        pos = q * (n - 1)
        lo_rank = int(math.floor(pos))
        hi_rank = min(lo_rank + 1, n - 1)
        v_lo, v_hi = np.searchsorted(cdf, [lo_rank, hi_rank], side="right")
        out.append(float(v_lo + (v_hi - v_lo) * (pos - lo_rank)))
    return out[0], out[1]


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map counts in ``[low, high]`` to 0..255, clipping outside; an empty window gives black."""
    span = max(high - low, 1e-6)
    scaled = (image.astype(np.float32) - np.float32(low)) * np.float32(255.0 / span)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def downscale(image: np.ndarray, size: int) -> np.ndarray:
    """Shrink so that the longer side is at most ``size``, by averaging whole blocks (no aliasing)."""
    h, w = image.shape
    f = max(1, math.ceil(max(h, w) / size))
    if f == 1:
        return image
    hh, ww = (h // f) * f, (w // f) * f
    blocks = image[:hh, :ww].reshape(hh // f, f, ww // f, f)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def png_gray8(pixels: np.ndarray, level: int = 3) -> bytes:
    """Encode a 2-D uint8 array as a grayscale PNG."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w = pixels.shape
    raw = np.empty((h, w + 1), np.uint8)
    raw[:, 0] = 0  # filter type "none" on every row
    raw[:, 1:] = pixels

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def render_png(image: np.ndarray, config: IntensityConfig, size: int | None = None) -> bytes:
    """A 16-bit image as a PNG with the index's intensity window, the longer side at most ``size``.

    The window comes from the full-resolution image, as in preprocessing; the shrink comes after it.
    """
    low, high = window(image, config)
    if size is not None:
        image = downscale(image, size)
    return png_gray8(to_uint8(image, low, high))


#: Pixels per histogram step: np.bincount copies its input to int64, so a band goes in slices.
_HIST_SLICE = 1 << 18


def render_bands(bands: Iterable[tuple[int, np.ndarray, tuple[int, int]]], config: IntensityConfig,
                 size: int) -> bytes:  # fmt: skip
    """:func:`render_png` of an image given as bands of rows (:func:`indexer.images.bands.iter_bands`),
    holding one band at a time: the window from a histogram summed band by band (the same full-resolution
    window), the shrink from block sums. A float image (one band) goes through :func:`render_png`.

    Raises
    ------
    ValueError
        If ``bands`` is empty.
    """
    counts = acc = None
    f = hh = ww = 0
    for y0, band, (h, w) in bands:
        if band.dtype.kind == "f":
            return render_png(band, config, size)
        if acc is None:
            f = max(1, math.ceil(max(h, w) / size))
            hh, ww = (h // f) * f, (w // f) * f
            acc = np.zeros((hh // f, ww // f), np.float64)
            counts = np.zeros(1 << (8 * band.dtype.itemsize), np.int64)
        if config.mode == "percentile":
            flat = band.reshape(-1)
            for i in range(0, flat.size, _HIST_SLICE):
                counts += np.bincount(flat[i : i + _HIST_SLICE], minlength=counts.size)
        rows = min(band.shape[0], hh - y0)
        if rows <= 0:
            continue
        sums = band[:rows, :ww].reshape(rows, ww // f, f).sum(axis=2, dtype=np.float64)
        out_rows = (y0 + np.arange(rows)) // f
        starts = np.flatnonzero(np.r_[True, out_rows[1:] != out_rows[:-1]])
        acc[out_rows[starts]] += np.add.reduceat(sums, starts, axis=0)
    if acc is None:
        raise ValueError("no pixels")
    low, high = window_of_counts(counts, config) if config.mode == "percentile" else window(acc[:0], config)
    return png_gray8(to_uint8((acc / (f * f)).astype(np.float32), low, high))


def placeholder_png(size: int = 128) -> bytes:
    """A mid-gray square with a darker cross: shown where a source image cannot be read."""
    img = np.full((size, size), 200, np.uint8)
    idx = np.arange(size)
    for d in (-1, 0, 1):
        j = np.clip(idx + d, 0, size - 1)
        img[idx, j] = 110
        img[idx, size - 1 - j] = 110
    return png_gray8(img)
