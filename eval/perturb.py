"""Perturbations of the raw image, applied BEFORE any preprocessing, in the image's own intensity scale.
Pure and seeded.

Each perturbation takes a 2-D camera image and returns an image of the same pixel type clipped to
``[0, saturation]``, the image's full scale (:mod:`eval.intensity`: 255 for 8-bit, 4095 for 12-bit data in
16-bit files such as BBBC006, 65535 for 16-bit, 1.0 for float in [0, 1]). Every parameter is relative to
that scale, so one severity is the same degradation of the same picture stored at 8, 12 or 16 bits or as
float: the read-noise sigma is given in counts of a 12-bit full scale (4095) and scaled by
``saturation / 4095``; the photon budget, the exposure factor and the gamma are taken at full scale.
Each has a ladder of 5 severities; severity 0
is the identity and returns an identical copy, bit for bit. Randomness comes only from the
``np.random.Generator`` passed in; :func:`perturbation_rng` derives one per (seed, image, perturbation,
severity), so a run can be repeated and each image gets its own noise.

Ladders (severity 0 is the identity value in brackets). BBBC006 pixel on the sample:
6.45 um camera pixel x 2 binning / 20x = 0.645 um.

============== ============================================ ======== ==================================
name           parameter (unit)                             identity levels 1..5
============== ============================================ ======== ==================================
gaussian_noise read-noise sigma (counts of 4095 full scale) 0        10, 25, 50, 100, 200
poisson_noise  photons at full scale (saturation counts)    inf      1000, 300, 100, 30, 10
gaussian_blur  Gaussian sigma (pixels; x 0.645 um)          0        0.5, 1, 2, 4, 8
brightness     exposure factor (counts x factor)            1        1.1, 1.25, 1.5, 2, 3
contrast       gamma on counts / saturation                 1        0.9, 0.8, 0.65, 0.5, 0.35
translate_crop fraction of each side kept                   1        0.95, 0.9, 0.8, 0.7, 0.5
============== ============================================ ======== ==================================

Notes on the choices:

- ``gaussian_noise`` adds zero-mean noise to the raw counts, before the intensity window: negative
  excursions survive into the model input (the earlier notebook added noise after normalising and
  clipped it to [0, 1], which removed the negative half).
- ``poisson_noise`` simulates a shorter exposure at the same gain: counts are scaled so that
  ``saturation`` counts hold ``photons`` photons, a Poisson count is drawn and scaled back. The budget
  is tied to the camera's full scale, not to the image, so a dim image gets noisier than a bright one,
  as it would on the microscope. The image's own shot noise is taken as signal, which is fair while the
  simulated budget is far below the real one.
- Pixels at saturation stay saturated under both noises: their true signal is above full scale and
  unknown, and read or shot noise would not bring a clipped pixel back into range.
- ``brightness`` is over-exposure: counts scale up and clip at saturation, as the camera does. On the
  real z16 images about 2, 4, 9, 33 and 80 % of the pixels end saturated at levels 1..5. Dimming is not
  on the ladder: under the default per-image percentile window a pure scale-down only requantises the
  counts, and its physical cost (fewer photons) is what ``poisson_noise`` measures. The function itself
  accepts any factor > 0.
- ``contrast`` is ``I' = saturation * (I / saturation) ** gamma``; gamma < 1 lifts dim structure and
  compresses the bright end, a non-linear change that no intensity window undoes.
- ``translate_crop`` keeps a window of ``round(fraction * side)`` pixels of each side at a seeded
  random offset (uniform over all offsets that fit), so it is a crop (a zoom of ``1 / fraction`` once
  preprocessing resizes it) plus a translation of up to ``1 - fraction`` of each side. It returns the
  smaller array; preprocessing resizes every image to the model input anyway.

The natural perturbation ``defocus_z``, the same site at another real z-slice of the BBBC006 stack, is
not an array function: :func:`z_pairs` finds those pairs among indexed records and
:func:`defocus_offset_um` converts a slice to micrometres from focus.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.intensity import REFERENCE_FULL_SCALE, scale_of

# BBBC006's focal plane and z step, named once for the data set.
from indexer.bbbc006.constants import FOCUS_Z, Z_STEP_UM

#: Number of severity levels above the identity.
N_LEVELS = 5

PerturbFn = Callable[[np.ndarray, float, np.random.Generator, "float | None"], np.ndarray]


@dataclass(frozen=True)
class Perturbation:
    """One perturbation ladder.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"gaussian_blur"``.
    unit : str
        What the parameter means, with its unit.
    levels : tuple of float
        The parameter at severities 1..5, from mild to severe.
    fn : callable
        ``fn(image, value, rng, saturation) -> image`` of the input's pixel type.
    identity : float
        The parameter value that leaves the image unchanged (severity 0).
    """

    name: str
    unit: str
    levels: tuple[float, ...]
    fn: PerturbFn
    identity: float

    def __post_init__(self) -> None:
        if len(self.levels) != N_LEVELS:
            raise ValueError(f"{self.name}: expected {N_LEVELS} levels, got {len(self.levels)}")


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image (height, width), got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"expected an integer or float image, got dtype {image.dtype}")
    return image


def _full_scale(image: np.ndarray, saturation: float | None) -> float:
    # None: the image's own scale by the rules of eval.intensity (8-bit 255, 12-bit 4095, ...).
    return float(scale_of([image]).full_scale if saturation is None else saturation)


def _out_dtype(image: np.ndarray) -> np.dtype:
    # The input's pixel type: 8-bit stays 8-bit, float stays float (signed integers as before: uint16).
    if image.dtype.kind in "uf":
        return image.dtype
    return np.dtype(np.uint16)


def _to_counts(x: np.ndarray, saturation: float, dtype: np.dtype) -> np.ndarray:
    # Cameras report whole counts and clip at both ends of the ADC range; float data keeps its fractions.
    if np.dtype(dtype).kind == "f":
        return np.clip(x, 0, saturation).astype(dtype)
    return np.clip(np.rint(x), 0, saturation).astype(dtype)


def _keep_saturated(out: np.ndarray, image: np.ndarray, saturation: float) -> np.ndarray:
    # A clipped pixel's true signal is above full scale; noise would not bring it back into range.
    out[image >= saturation] = saturation
    return out


def gaussian_noise(
    image: np.ndarray, sigma: float, rng: np.random.Generator, saturation: float | None = None
) -> np.ndarray:
    """Add zero-mean Gaussian read noise to the raw counts.

    Parameters
    ----------
    image : np.ndarray
        2-D camera image in counts (uint16 for BBBC006).
    sigma : float
        Noise standard deviation in counts of a 12-bit full scale (4095), scaled by ``saturation / 4095``
        (on BBBC006, counts); 0 returns a copy of ``image``.
    rng : np.random.Generator
        The only source of randomness.
    saturation : float, optional
        Full scale (default: the image's own, :func:`eval.intensity.scale_of`); the result is clipped to
        ``[0, saturation]`` and saturated pixels stay saturated.

    Returns
    -------
    np.ndarray
        Image of the same shape and pixel type.
    """
    image = _check_image(image)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return image.copy()
    full = _full_scale(image, saturation)
    noisy = image.astype(np.float64) + rng.normal(0.0, sigma * full / REFERENCE_FULL_SCALE, image.shape)
    return _keep_saturated(_to_counts(noisy, full, _out_dtype(image)), image, full)


def poisson_noise(
    image: np.ndarray, photons: float, rng: np.random.Generator, saturation: float | None = None
) -> np.ndarray:
    """Shot noise of a smaller photon budget: scale to photons, draw Poisson, scale back.

    Parameters
    ----------
    image : np.ndarray
        2-D camera image in counts.
    photons : float
        Photons collected at full scale (``saturation`` counts); ``inf`` returns a copy of ``image``.
    rng : np.random.Generator
        The only source of randomness.
    saturation : float, optional
        Full scale (default: the image's own, :func:`eval.intensity.scale_of`); the result is clipped to
        ``[0, saturation]`` and saturated pixels stay saturated.

    Returns
    -------
    np.ndarray
        Image of the same shape and pixel type, quantised to steps of ``saturation / photons``.
    """
    image = _check_image(image)
    if not photons > 0:
        raise ValueError(f"photons must be > 0, got {photons}")
    if math.isinf(photons):
        return image.copy()
    full = _full_scale(image, saturation)
    gain = photons / full  # photons per count
    expected = np.clip(image.astype(np.float64), 0, full) * gain
    counts = rng.poisson(expected) / gain
    return _keep_saturated(_to_counts(counts, full, _out_dtype(image)), image, full)


def gaussian_blur(
    image: np.ndarray, sigma: float, rng: np.random.Generator | None = None, saturation: float | None = None
) -> np.ndarray:
    """Gaussian blur, a simple model of defocus (``scipy.ndimage.gaussian_filter``, reflect borders).

    Parameters
    ----------
    image : np.ndarray
        2-D camera image in counts.
    sigma : float
        Standard deviation in pixels (BBBC006: 0.645 um per pixel); 0 returns a copy of ``image``.
    rng : np.random.Generator, optional
        Unused (the blur is deterministic); accepted so every perturbation has one signature.
    saturation : float, optional
        Full scale (default: the image's own); the result is clipped to ``[0, saturation]``.

    Returns
    -------
    np.ndarray
        Image of the same shape and pixel type.
    """
    image = _check_image(image)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return image.copy()
    from scipy import ndimage  # scipy is the optional "eval" extra; the module imports without it

    blurred = ndimage.gaussian_filter(image.astype(np.float64), sigma=sigma, mode="reflect")
    return _to_counts(blurred, _full_scale(image, saturation), _out_dtype(image))


def brightness(
    image: np.ndarray, factor: float, rng: np.random.Generator | None = None, saturation: float | None = None
) -> np.ndarray:
    """Scale the exposure: counts times ``factor``, clipped at saturation as the camera clips.

    Parameters
    ----------
    image : np.ndarray
        2-D camera image in counts.
    factor : float
        Exposure factor (> 0); 1 returns a copy of ``image``. The ladder over-exposes (factor > 1).
    rng : np.random.Generator, optional
        Unused (deterministic); accepted so every perturbation has one signature.
    saturation : float, optional
        Full scale (default: the image's own); the result is clipped to ``[0, saturation]``.

    Returns
    -------
    np.ndarray
        Image of the same shape and pixel type.
    """
    image = _check_image(image)
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if factor == 1:
        return image.copy()
    return _to_counts(image.astype(np.float64) * factor, _full_scale(image, saturation), _out_dtype(image))


def contrast(
    image: np.ndarray, gamma: float, rng: np.random.Generator | None = None, saturation: float | None = None
) -> np.ndarray:
    """Gamma curve on the full-scale-normalised counts: ``saturation * (I / saturation) ** gamma``.

    Parameters
    ----------
    image : np.ndarray
        2-D camera image in counts.
    gamma : float
        Exponent (> 0); 1 returns a copy of ``image``; < 1 lifts dim structure.
    rng : np.random.Generator, optional
        Unused (deterministic); accepted so every perturbation has one signature.
    saturation : float, optional
        Full scale (default: the image's own); also the normaliser, so 0 and ``saturation`` are fixed
        points.

    Returns
    -------
    np.ndarray
        Image of the same shape and pixel type.
    """
    image = _check_image(image)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if gamma == 1:
        return image.copy()
    full = _full_scale(image, saturation)
    unit = np.clip(image.astype(np.float64), 0, full) / full
    return _to_counts(full * unit**gamma, full, _out_dtype(image))


def translate_crop(
    image: np.ndarray, keep: float, rng: np.random.Generator, saturation: float | None = None
) -> np.ndarray:
    """Keep a window of ``keep`` of each side at a seeded random offset (crop plus translation).

    Parameters
    ----------
    image : np.ndarray
        2-D camera image in counts.
    keep : float
        Fraction of each side kept, in (0, 1]; 1 returns a copy of ``image``.
    rng : np.random.Generator
        Draws the window's offset, uniform over all offsets where it fits.
    saturation : float, optional
        Full scale (default: the image's own); the window is clipped to ``[0, saturation]``.

    Returns
    -------
    np.ndarray
        Image of the input's pixel type, of shape ``(round(keep * height), round(keep * width))``, at
        least 1 x 1.
    """
    image = _check_image(image)
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if keep == 1:
        return image.copy()
    h, w = image.shape
    ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return _to_counts(image[y : y + ch, x : x + cw], _full_scale(image, saturation), _out_dtype(image))


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation(
            "gaussian_noise",
            "read-noise sigma (counts of a 4095 full scale)",
            (10, 25, 50, 100, 200),
            gaussian_noise,
            0.0,
        ),
        Perturbation(
            "poisson_noise", "photons at full scale", (1000, 300, 100, 30, 10), poisson_noise, math.inf
        ),
        Perturbation("gaussian_blur", "sigma (pixels)", (0.5, 1, 2, 4, 8), gaussian_blur, 0.0),
        Perturbation("brightness", "exposure factor", (1.1, 1.25, 1.5, 2, 3), brightness, 1.0),
        Perturbation("contrast", "gamma", (0.9, 0.8, 0.65, 0.5, 0.35), contrast, 1.0),
        Perturbation(
            "translate_crop", "fraction of each side kept", (0.95, 0.9, 0.8, 0.7, 0.5), translate_crop, 1.0
        ),
    )
}


def get(name: str) -> Perturbation:
    """Look up a perturbation by name.

    Parameters
    ----------
    name : str
        A key of :data:`PERTURBATIONS`.

    Returns
    -------
    Perturbation
        The registry entry.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the valid names.
    """
    try:
        return PERTURBATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown perturbation {name!r}; choose from: {', '.join(PERTURBATIONS)}") from None


def _check_severity(severity: int) -> int:
    # bool is an int and 2.0 == 2: refuse both rather than guess what the caller meant.
    if (
        isinstance(severity, bool)
        or not isinstance(severity, (int, np.integer))
        or not 0 <= severity <= N_LEVELS
    ):
        raise ValueError(f"severity must be an integer in 0..{N_LEVELS} (0 = identity), got {severity!r}")
    return int(severity)


def severity_value(name: str, severity: int) -> float:
    """The parameter value of perturbation ``name`` at ``severity``.

    Parameters
    ----------
    name : str
        A key of :data:`PERTURBATIONS`.
    severity : int
        0..5; 0 gives the identity value (e.g. sigma 0, exposure factor 1, ``inf`` photons).

    Returns
    -------
    float
        The parameter, in the unit given by ``PERTURBATIONS[name].unit``.

    Raises
    ------
    ValueError
        For an unknown name or a severity that is not an integer in 0..5.
    """
    p = get(name)
    severity = _check_severity(severity)
    return float(p.identity if severity == 0 else p.levels[severity - 1])


def apply(
    name: str,
    image: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    saturation: float | None = None,
) -> np.ndarray:
    """Perturb a raw 2-D image at one severity.

    Parameters
    ----------
    name : str
        A key of :data:`PERTURBATIONS`.
    image : np.ndarray
        2-D camera image in counts (uint16 for BBBC006).
    severity : int
        0..5; 0 returns an identical copy (same dtype, bit for bit) and draws nothing from ``rng``.
    rng : np.random.Generator
        The only source of randomness; see :func:`perturbation_rng`.
    saturation : float, optional
        Full scale of the image type (:func:`eval.intensity.scale_of`; BBBC006: 4095). Default: the image's
        own by those rules; pass the scale of its type so that a dim image of a brighter set is not
        mistaken for another bit depth.

    Returns
    -------
    np.ndarray
        Image of the input's pixel type in ``[0, saturation]``; same shape except for ``translate_crop``.

    Raises
    ------
    ValueError
        For an unknown name, a severity outside 0..5 or an image that is not 2-D.
    """
    p = get(name)
    severity = _check_severity(severity)
    image = _check_image(image)
    if severity == 0:
        return image.copy()
    return p.fn(image, p.levels[severity - 1], rng, saturation)


def perturbation_rng(seed: int, image_id: int, name: str, severity: int) -> np.random.Generator:
    """A generator for one (seed, image, perturbation, severity), stable across runs and processes.

    Parameters
    ----------
    seed : int
        The run's seed (>= 0).
    image_id : int
        The image's id (any 64-bit integer).
    name : str
        The perturbation's name, hashed with CRC-32 (Python's ``hash`` of a str changes per process).
    severity : int
        0..5.

    Returns
    -------
    np.random.Generator
        ``np.random.default_rng([seed, id low 32 bits, id high 32 bits, crc32(name), severity])``.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    uid = int(image_id) % (1 << 64)  # SeedSequence takes non-negative words only
    return np.random.default_rng(
        [int(seed), uid & 0xFFFFFFFF, uid >> 32, zlib.crc32(name.encode("utf-8")), _check_severity(severity)]
    )


def defocus_offset_um(z: int, focus: int = FOCUS_Z, step_um: float = Z_STEP_UM) -> float:
    """Signed distance of slice ``z`` from the focal plane, in micrometres.

    Parameters
    ----------
    z : int
        The z-slice index (BBBC006: 0..33).
    focus : int
        The in-focus slice (BBBC006: 16).
    step_um : float
        Distance between slices (BBBC006: 2 um).

    Returns
    -------
    float
        ``(z - focus) * step_um``; negative below focus.
    """
    return float((z - focus) * step_um)


def _field(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


#: The fields that name one stack (a field of view in one channel), whose slices differ in z only.
SITE_KEYS = ("plate", "well", "site", "channel")
_STACK = object()  # the first item of a z-pair group keyed by its multi-plane file, not by its names


def z_pairs(records: Sequence[Any], reference_z: int = FOCUS_Z) -> dict[int, list[tuple[int, int]]]:
    """Pair each image at the reference slice with the same field of view at other z-slices.

    Parameters
    ----------
    records : sequence of dict or object
        Each with ``id``, ``plate``, ``well``, ``site``, ``channel`` and ``z`` (keys or attributes).
        Records with any of these fields ``None`` (a file name that says nothing) are left out: two
        unknown wells are not the same well; except the planes of one multi-plane file (``path``
        ``file.tif#2``), which are one field of view, paired by file and channel. Such a stack without
        the reference slice takes its middle plane (the lower of two) as the reference.
    reference_z : int
        The slice whose records are the clean queries (BBBC006: 16, in focus).

    Returns
    -------
    dict of int to list of (int, int)
        For every complete record at ``reference_z``: the ``(other_id, abs(z - reference_z))`` of the
        records with the same (plate, well, site, channel) at another z, nearest slice first, ties by
        id. A reference record without partners maps to an empty list.
    """
    from indexer.images.sources import stack_file

    groups: dict[tuple[Any, ...], list[Any]] = {}
    for r in records:
        key = tuple(_field(r, f) for f in SITE_KEYS)
        if any(v is None for v in key):
            # The planes of one multi-plane file are one field of view, named or not.
            file = stack_file(_field(r, "path"))
            key = None if file is None else (_STACK, file, _field(r, "channel"))
        if _field(r, "z") is None or _field(r, "id") is None or key is None:
            continue
        groups.setdefault(key, []).append(r)
    out: dict[int, list[tuple[int, int]]] = {}
    for key, members in groups.items():
        ref_z = reference_z
        zs = sorted(int(_field(m, "z")) for m in members)
        if key[0] is _STACK and reference_z not in zs:
            ref_z = zs[(len(zs) - 1) // 2]  # a stack of its own numbering: its middle plane is the reference
        for ref in members:
            if _field(ref, "z") != ref_z:
                continue
            others = [
                (_field(m, "id"), abs(int(_field(m, "z")) - ref_z))
                for m in members
                if _field(m, "z") != ref_z
            ]
            out[_field(ref, "id")] = sorted(others, key=lambda t: (t[1], t[0]))
    return out
