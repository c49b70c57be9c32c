"""Decode TIFF bytes and check that the result is a usable microscopy image.

tifffile reads and checks the structure (pages, shape, size); the pixels come from libtiff through
imagecodecs, which decodes a BBBC006 LZW image in 2.4 ms where tifffile's per-strip loop takes 6.2 ms.
Where libtiff refuses a file, tifffile decodes it, so what is accepted is what tifffile accepts.

A bad file raises :class:`~indexer.errors.DecodeError` with a one-line reason; the pipeline records it
as a rejected image and goes on.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np

from indexer.errors import DecodeError

#: Smallest side accepted: one ViT patch. Smaller images carry too little to embed.
MIN_SIDE = 16
#: Largest number of pixels accepted (a 16k x 16k mosaic); larger files are not single fields of view.
MAX_PIXELS = 16384 * 16384


def content_id(data: bytes) -> int:
    """Return a stable, non-negative int64 id derived from a file's bytes (BLAKE2b, 63 bits).

    Content-derived ids make a renamed copy the same image, so a re-run skips it.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def _libtiff_pixels(data: bytes, shape: tuple, dtype: np.dtype) -> np.ndarray | None:
    """The first page's pixels decoded by libtiff, or None where libtiff fails or disagrees on shape."""
    try:
        import imagecodecs

        image = imagecodecs.tiff_decode(data)
    except Exception:  # missing codec or a file libtiff refuses: tifffile has the last word
        return None
    if image.shape != shape or image.dtype != dtype:
        return None
    return image


def decode_tiff(data: bytes) -> np.ndarray:
    """Decode one single-page grayscale 16-bit TIFF to a 2-D uint16 array.

    Raises
    ------
    DecodeError
        If the bytes are not a readable TIFF, have several pages or samples, are not unsigned 16-bit
        integers, or are smaller than one patch or larger than :data:`MAX_PIXELS`.
    """
    import tifffile

    if not data:
        raise DecodeError("empty file")
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            n_pages = len(tif.pages)
            if n_pages == 0:
                raise DecodeError("not a readable TIFF: no image found (truncated or damaged file?)")
            if n_pages != 1:
                raise DecodeError(f"multi-page TIFF ({n_pages} pages); expected one plane per file")
            page = tif.pages[0]
            shape = tuple(page.shape)
            if len(shape) != 2:
                raise DecodeError(f"not a single-channel image (shape {shape}); expected height x width")
            if shape[0] * shape[1] > MAX_PIXELS:
                raise DecodeError(f"image too large ({shape[1]}x{shape[0]} pixels)")
            image = _libtiff_pixels(data, shape, page.dtype)
            if image is None:
                image = page.asarray(maxworkers=1)  # parallelism comes from the callers' workers
    except DecodeError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        raise DecodeError(f"not a readable TIFF: {type(e).__name__}: {e}".splitlines()[0][:300]) from e
    if image.dtype != np.uint16:
        # 8-bit, signed or float data would be scaled unlike the 16-bit camera images of the index.
        raise DecodeError(f"unsupported pixel type {image.dtype}; expected unsigned 16-bit camera images")
    if min(image.shape) < MIN_SIDE:
        raise DecodeError(
            f"image too small ({image.shape[1]}x{image.shape[0]}); at least {MIN_SIDE} px a side"
        )
    return image


#: What ``mae-index synth`` writes into the TIFF ImageDescription tag, so a synthetic image says so
#: wherever it is copied: the index records it as ``source = synthetic``.
SYNTHETIC_MARKER = "source=synthetic"


def image_source(data: bytes) -> str:
    """Where an image came from, by its TIFF ImageDescription: ``"synthetic"`` or ``"real"``.

    ``mae-index synth`` writes :data:`SYNTHETIC_MARKER` into the description; every other image (the
    BBBC006 files carry no description) counts as real. Reads the first page's tags only.

    Parameters
    ----------
    data : bytes
        The TIFF file's bytes (already decoded once, so readable).

    Returns
    -------
    str
        ``"synthetic"`` or ``"real"``.
    """
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            description = tif.pages[0].description if len(tif.pages) else ""
    except Exception:  # a file decode_tiff accepted: any trouble here only means "no marker"
        return "real"
    return "synthetic" if SYNTHETIC_MARKER in (description or "") else "real"
