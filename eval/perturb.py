"""Perturbations of the raw 16-bit image, applied BEFORE preprocessing. Pure and seeded.

Each perturbation has a ladder of 5 severities plus level 0 = the identity (bit for bit). Units are
those of a fluorescence camera; images stay uint16, clipped to [0, saturation] (BBBC006: 4095).

| name             | unit                               | levels 1..5                     |
| ---------------- | ---------------------------------- | ------------------------------- |
| gaussian_noise   | read-noise sigma, counts           | 10, 25, 50, 100, 200            |
| poisson_noise    | photons at the image's 99.8th pct  | 1000, 300, 100, 30, 10          |
| gaussian_blur    | sigma, pixels                      | 0.5, 1, 2, 4, 8                 |
| brightness       | exposure factor                    | 0.8, 0.6, 0.4, 1.5, 2.5         |
| contrast         | gamma on counts / saturation       | 0.9, 0.8, 0.65, 0.5, 0.35       |
| translate_crop   | fraction of each side kept (centre)| 0.95, 0.9, 0.8, 0.7, 0.5        |

Noise is added to raw counts, so negative excursions survive until the intensity window clips them
(the seed notebook added noise after normalising and clipped it to [0, 1], losing half of it).
``brightness`` dims first (less signal relative to the offset-free image) then over-exposes, saturating
at 4095 as the camera does. ``translate_crop`` returns a smaller array: preprocessing resizes anyway.

The natural perturbation, the same site at another z-slice of the real z-stack, is not an array
function: :func:`z_pairs` finds those pairs among indexed records.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

SATURATION = 4095


@dataclass(frozen=True)
class Perturbation:
    """One perturbation: its name, the unit of its parameter, the 5 levels and the function."""

    name: str
    unit: str
    levels: tuple[float, ...]
    fn: Callable[[np.ndarray, float, np.random.Generator, int], np.ndarray]


def _clip(x: np.ndarray, saturation: int) -> np.ndarray:
    return np.clip(np.rint(x), 0, saturation).astype(np.uint16)


def _gaussian_noise(image, sigma, rng, sat):
    return _clip(image.astype(np.float64) + rng.normal(0.0, sigma, image.shape), sat)


def _poisson_noise(image, photons, rng, sat):
    ref = max(float(np.percentile(image, 99.8)), 1.0)
    scale = photons / ref  # photons per count
    counts = rng.poisson(np.clip(image.astype(np.float64), 0, None) * scale)
    return _clip(counts / scale, sat)


def _gaussian_blur(image, sigma, rng, sat):
    return _clip(ndimage.gaussian_filter(image.astype(np.float64), sigma=sigma, mode="reflect"), sat)


def _brightness(image, factor, rng, sat):
    return _clip(image.astype(np.float64) * factor, sat)


def _contrast(image, gamma, rng, sat):
    return _clip(sat * (np.clip(image.astype(np.float64), 0, sat) / sat) ** gamma, sat)


def _translate_crop(image, keep, rng, sat):
    h, w = image.shape
    ch, cw = max(16, int(round(h * keep))), max(16, int(round(w * keep)))
    # A random offset inside the image (seeded): a crop plus a translation of the field of view.
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return image[y : y + ch, x : x + cw].copy()


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("gaussian_noise", "sigma (counts)", (10, 25, 50, 100, 200), _gaussian_noise),
        Perturbation("poisson_noise", "photons at p99.8", (1000, 300, 100, 30, 10), _poisson_noise),
        Perturbation("gaussian_blur", "sigma (px)", (0.5, 1, 2, 4, 8), _gaussian_blur),
        Perturbation("brightness", "exposure factor", (0.8, 0.6, 0.4, 1.5, 2.5), _brightness),
        Perturbation("contrast", "gamma", (0.9, 0.8, 0.65, 0.5, 0.35), _contrast),
        Perturbation("translate_crop", "fraction kept", (0.95, 0.9, 0.8, 0.7, 0.5), _translate_crop),
    )
}


def _get(name: str) -> Perturbation:
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name]


def severity_value(name: str, severity: int) -> float:
    """The parameter value of ``name`` at ``severity`` (the identity value at 0).

    Raises
    ------
    ValueError
        For an unknown name or a severity outside 0..5.
    """
    p = _get(name)
    if not 0 <= severity <= 5:
        raise ValueError(f"severity must be 0..5, got {severity}")
    if severity == 0:
        return {"gaussian_noise": 0.0, "gaussian_blur": 0.0, "poisson_noise": float("inf")}.get(name, 1.0)
    return float(p.levels[severity - 1])


def apply(
    name: str, image: np.ndarray, severity: int, rng: np.random.Generator, saturation: int = SATURATION
) -> np.ndarray:
    """Perturb a 2-D uint16 ``image`` at ``severity`` (0 returns an identical copy)."""
    p = _get(name)
    value = severity_value(name, severity)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if severity == 0:
        return image.copy()
    return p.fn(image, value, rng, saturation)


def perturbation_rng(seed: int, image_id: int, name: str, severity: int) -> np.random.Generator:
    """A generator for one (seed, image, perturbation, severity): stable across runs and processes."""
    return np.random.default_rng(
        [seed, image_id & 0xFFFFFFFF, image_id >> 32, zlib.crc32(name.encode()), severity]
    )


def defocus_offset_um(z: int, focus: int = 16, step_um: float = 2.0) -> float:
    """Offset from the focal plane in micrometres (BBBC006: 2 um steps, z16 in focus)."""
    return (z - focus) * step_um


def _field(r: Any, key: str) -> Any:
    return r[key] if isinstance(r, Mapping) else getattr(r, key)


def z_pairs(records: Sequence[Any], reference_z: int = 16) -> dict[int, list[tuple[int, int]]]:
    """For each record at ``reference_z``, the ``(other_id, |dz|)`` of the same plate, well, site and
    channel at other z-slices. Records are dicts or objects with id, plate, well, site, channel, z."""
    groups: dict[tuple, list[Any]] = {}
    for r in records:
        if _field(r, "z") is None or _field(r, "well") is None:
            continue
        key = tuple(_field(r, f) for f in ("plate", "well", "site", "channel"))
        groups.setdefault(key, []).append(r)
    out: dict[int, list[tuple[int, int]]] = {}
    for members in groups.values():
        for ref in (m for m in members if _field(m, "z") == reference_z):
            out[_field(ref, "id")] = sorted(
                (_field(m, "id"), abs(_field(m, "z") - reference_z))
                for m in members
                if _field(m, "z") != reference_z
            )
    return out
