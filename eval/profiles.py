"""Baseline profiles of images for ``mae-eval phenotype``: what a learned embedding has to beat. Pure.

- ``histogram``: a 64-bin histogram of the model's own input (the counts after the index's intensity
  window, in [0, 1]), as fractions of the image's pixels.
- ``classical``: a small CellProfiler-like profile built with scikit-image: Otsu segmentation of the
  smoothed image, the object count and foreground fraction, the mean and spread of the objects' area,
  eccentricity and solidity, the intensity (relative to the image type's full scale, :mod:`eval.intensity`)
  of the image and inside the objects, and GLCM texture (contrast, correlation, energy, homogeneity at 1
  and 4 pixels) as the mean over four angles and the angular spread (max - min).

Both are z-scored over the data set (:func:`zscore`) before cosine compares them, so that no single
feature's unit dominates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Histogram bins of the model input.
HIST_BINS = 64
#: Grey levels the image is quantised to for the GLCM.
GLCM_LEVELS = 32
#: GLCM distances (pixels) and angles (radians).
GLCM_DISTANCES = (1, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "correlation", "energy", "homogeneity")
#: Objects smaller than this (pixels) are noise, not cells.
MIN_OBJECT_PX = 20
SHAPE_PROPS = ("area", "eccentricity", "solidity")


def _require_skimage():
    try:
        import skimage  # noqa: F401
    except ImportError as e:  # the "eval" extra
        from indexer.core.errors import ConfigError

        raise ConfigError(
            "the classical baseline needs scikit-image: pip install 'mae-microscopy[eval]'"
        ) from e


def histogram_profile(unit: np.ndarray) -> np.ndarray:
    """64-bin histogram of an image already mapped to [0, 1] by the index's intensity window (fractions)."""
    counts = np.histogram(np.asarray(unit, dtype=np.float64), bins=HIST_BINS, range=(0.0, 1.0))[0]
    return counts / max(1, counts.sum())


def classical_names() -> list[str]:
    """The feature names of :func:`classical_profile`, in its order."""
    names = ["object_count", "foreground_fraction", "intensity_mean", "intensity_std", "object_intensity"]
    names += [f"{p}_{s}" for p in SHAPE_PROPS for s in ("mean", "std")]
    names += [f"glcm_{p}_d{d}_{s}" for p in GLCM_PROPS for d in GLCM_DISTANCES for s in ("mean", "spread")]
    return names


def classical_profile(image: np.ndarray, full_scale: float) -> np.ndarray:
    """The classical features of one 2-D image (names: :func:`classical_names`).

    Parameters
    ----------
    image : np.ndarray
        The raw 2-D image as indexed.
    full_scale : float
        Its type's full scale (:func:`eval.intensity.scale_of`): intensities are fractions of it.
    """
    _require_skimage()
    from skimage import filters, measure
    from skimage.feature import graycomatrix, graycoprops

    x = np.asarray(image, dtype=np.float64) / float(full_scale)
    smooth = filters.gaussian(x, sigma=1.0, preserve_range=True)
    fg = smooth > filters.threshold_otsu(smooth) if np.ptp(smooth) > 0 else np.zeros(x.shape, bool)
    objects = [o for o in measure.regionprops(measure.label(fg)) if o.area >= MIN_OBJECT_PX]
    shape = []
    for prop in SHAPE_PROPS:
        vals = np.array([getattr(o, prop) for o in objects], dtype=np.float64)
        shape += [float(vals.mean()), float(vals.std())] if len(vals) else [0.0, 0.0]
    feats = [float(len(objects)), float(fg.mean()), float(x.mean()), float(x.std()),
             float(x[fg].mean()) if fg.any() else 0.0, *shape]  # fmt: skip
    lo, hi = np.percentile(x, [0.5, 99.5])
    levels = np.clip((x - lo) / max(hi - lo, 1e-12) * (GLCM_LEVELS - 1), 0, GLCM_LEVELS - 1).astype(np.uint8)
    glcm = graycomatrix(levels, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True)
    for prop in GLCM_PROPS:
        table = np.nan_to_num(graycoprops(glcm, prop))  # (distances, angles)
        for row in table:
            feats += [float(row.mean()), float(row.max() - row.min())]
    return np.asarray(feats, dtype=np.float64)


def zscore(features: Sequence[np.ndarray]) -> np.ndarray:
    """Stack per-image features and z-score each column over the data set (a constant column: 0)."""
    x = np.stack([np.asarray(f, dtype=np.float64) for f in features])
    sd = x.std(axis=0)
    return np.where(sd > 0, (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)
