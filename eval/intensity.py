"""The intensity scale of an image: the value a saturated pixel holds, so that a perturbation means the
same degradation whether a picture is stored at 8, 12 or 16 bits or as float.

Rules, first that applies (one scale per image type: the images of one source and pixel type share it):

================================ =========================================================================
what the image says              full scale
================================ =========================================================================
OME-XML ``SignificantBits="b"``  ``2**b - 1``
TIFF tag MaxSampleValue (281)    its value, when it is below the pixel type's maximum
uint8                            255
uint16, every pixel <= 4095      4095 (12-bit camera data in 16-bit files, as BBBC006)
uint16, a pixel above 4095       65535
float, every pixel in [0, 1]     1.0
float, counts                    the integer rule on its maximum: 255, 4095 or 65535 (above: the maximum)
================================ =========================================================================

Pure rules, plus :func:`declared_full_scale`, which reads the tags of a recorded path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The full scale the perturbation ladders are written for (BBBC006's 12-bit camera); a level given in
#: counts (read-noise sigma) is scaled by ``full_scale / REFERENCE_FULL_SCALE`` on other scales.
REFERENCE_FULL_SCALE = 4095.0
_TWELVE_BIT = 4095
_OME_BITS = re.compile(rb'SignificantBits="(\d+)"')


@dataclass(frozen=True)
class IntensityScale:
    """The full scale of an image type and the rule that gave it (for the report)."""

    full_scale: float
    dtype: str
    rule: str

    def as_dict(self) -> dict[str, object]:
        """JSON form: ``{full_scale, dtype, rule}``."""
        return {"full_scale": self.full_scale, "dtype": self.dtype, "rule": self.rule}


def _integer_rule(peak: float) -> tuple[float, str]:
    if peak <= 255:
        return 255.0, "float counts, maximum <= 255: 8-bit"
    if peak <= _TWELVE_BIT:
        return float(_TWELVE_BIT), "float counts, maximum <= 4095: 12-bit"
    if peak <= 65535:
        return 65535.0, "float counts, maximum <= 65535: 16-bit"
    return float(peak), "float counts above 16 bits: the maximum"


def scale_of(images: Sequence[np.ndarray], declared: float | None = None) -> IntensityScale:
    """The full scale shared by ``images`` (one pixel type), by the rules of this module.

    Parameters
    ----------
    images : sequence of np.ndarray
        Images of one type (same dtype); their joint maximum decides between 12 and 16 bits, so that a dim
        16-bit image is not taken for a 12-bit one when its brighter siblings are not.
    declared : float, optional
        A full scale the file states (:func:`declared_full_scale`); wins over the pixel rules.

    Returns
    -------
    IntensityScale
    """
    if not len(images):
        raise ValueError("no images to take an intensity scale from")
    dtype = np.asarray(images[0]).dtype
    if declared is not None and declared > 0:
        return IntensityScale(
            float(declared), str(dtype), "declared by the file (SignificantBits/MaxSampleValue)"
        )
    peak = max(float(np.max(im)) for im in images)
    if dtype == np.uint8:
        return IntensityScale(255.0, "uint8", "8-bit")
    if np.issubdtype(dtype, np.integer):
        if peak <= _TWELVE_BIT:
            return IntensityScale(float(_TWELVE_BIT), str(dtype), "16-bit file, maximum <= 4095: 12-bit")
        top = float(np.iinfo(dtype).max)
        return IntensityScale(top, str(dtype), f"{np.iinfo(dtype).bits}-bit")
    low = min(float(np.min(im)) for im in images)
    if low >= 0 and peak <= 1:
        return IntensityScale(1.0, str(dtype), "float in [0, 1]")
    full, rule = _integer_rule(peak)
    return IntensityScale(full, str(dtype), rule)


def scales_by_type(
    images: Sequence[np.ndarray], kinds: Sequence[str | None], declared: Sequence[float | None] | None = None
) -> list[IntensityScale]:
    """One scale per image, shared by the images of the same ``kind`` (e.g. the source) and dtype.

    Parameters
    ----------
    images : sequence of np.ndarray
        The images.
    kinds : sequence of str or None
        What makes two images one type besides the pixel type (``ImageRecord.source``).
    declared : sequence of float or None, optional
        Each image's :func:`declared_full_scale`; the largest one declared in a type wins for the type.

    Returns
    -------
    list of IntensityScale
        In the order of ``images``.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (im, kind) in enumerate(zip(images, kinds)):
        groups.setdefault((str(kind or "unknown"), str(np.asarray(im).dtype)), []).append(i)
    out: list[IntensityScale | None] = [None] * len(images)
    for members in groups.values():
        stated = [d for i in members if declared is not None and (d := declared[i]) is not None]
        scale = scale_of([images[i] for i in members], max(stated) if stated else None)
        for i in members:
            out[i] = scale
    return out  # type: ignore[return-value]


def describe(scales: Sequence[IntensityScale], kinds: Sequence[str | None]) -> dict[str, dict[str, object]]:
    """The scale of each image type, ``{"<kind> <dtype>": {full_scale, dtype, rule, images}}`` (report)."""
    out: dict[str, dict[str, object]] = {}
    for scale, kind in zip(scales, kinds):
        entry = out.setdefault(f"{kind or 'unknown'} {scale.dtype}", {**scale.as_dict(), "images": 0})
        entry["images"] = int(entry["images"]) + 1  # type: ignore[call-overload]
    return dict(sorted(out.items()))


def declared_full_scale_at(path: str) -> float | None:
    """:func:`declared_full_scale` of the file an index recorded at ``path`` (a plane ``file.tif#3``: its
    file); ``None`` where it cannot be read."""
    from indexer.images.sources import read_path

    for candidate in (path, re.sub(r"#\d+$", "", path)):
        try:
            return declared_full_scale(read_path(candidate))
        except (OSError, ValueError):
            continue
    return None


def declared_full_scale(data: bytes) -> float | None:
    """The full scale a TIFF states, or ``None``: OME-XML ``SignificantBits``, else the MaxSampleValue tag
    when it is below the pixel type's maximum (writers often fill it with ``2**bits - 1``, which says
    nothing). Any file tifffile cannot read states nothing."""
    from indexer.images.decode import open_tiff

    try:
        with open_tiff(data) as tif:
            page = tif.pages[0]
            ome = tif.ome_metadata
            if ome:
                m = _OME_BITS.search(ome.encode("utf-8", "replace"))
                if m and 0 < int(m.group(1)) <= 64:
                    return float(2 ** int(m.group(1)) - 1)
            tag = page.tags.get(281)  # MaxSampleValue
            if tag is not None and page.dtype is not None and page.dtype.kind == "u":
                value = float(np.max(tag.value))
                if 0 < value < np.iinfo(page.dtype).max:
                    return value
    except Exception:  # an unreadable header states nothing; the pixel rules decide
        return None
    return None
