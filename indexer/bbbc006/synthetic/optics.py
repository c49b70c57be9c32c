"""The optics and the camera of a synthetic BBBC006 image: FFT blurs, the defocus disk of each z-slice,
and a 12-bit camera's shot and read noise. Pure numpy, no I/O."""

from __future__ import annotations

import numpy as np

from indexer.bbbc006.constants import FOCUS_Z, SATURATION

# Camera model, fitted to the real w2 images: dark gaps sit at ~230-300 ADU, and the pixel variance
# grows with the level at about 0.6-0.7 ADU per ADU (shot noise) over a few ADU of read noise.
OFFSET = 200.0
_GAIN = 0.65  # ADU per photo-electron
_READ_NOISE = 4.0  # ADU

# Optics: 20x NA 0.45 with 2x binning is 0.645 µm per pixel. Out of focus by dz, the light of a point
# fills a disk of radius dz * tan(asin(NA)) = 0.504 dz (geometric optics, objective in air): 1.0 µm =
# 1.56 px per 2 µm slice. Real defocus is not symmetric (the cells sit on the glass, the objective has
# some spherical aberration), so slices below focus spread a little slower than the same distance
# above, and z = 16 - k and 16 + k are different images.
_PSF_SIGMA = 0.6  # px, the in-focus spot
_UM_PER_PX = 0.645
_Z_STEP_UM = 2.0
_NA = 0.45
_DISK_PX_PER_SLICE = _Z_STEP_UM * float(np.tan(np.arcsin(_NA))) / _UM_PER_PX  # 1.56
_BELOW_FOCUS_FACTOR = 0.85  # below focus the disk grows at 0.85 of the rate above
CONTRAST_LOSS_PER_SLICE = 0.03  # out-of-focus haze flattens the image beyond what blur alone does
_PAD = 68  # reflect padding before the FFT blur: beyond the widest disk (z33, 26.5 px) and its spot


def fast_len(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3, 5 and 7 (fast FFT sizes)."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def gaussian_transfer(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """The Fourier transform of a unit-sum Gaussian of ``sigma`` pixels, on an ``rfft2`` grid."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return np.exp(-2.0 * np.pi**2 * sigma**2 * (fy**2 + fx**2))


def upsample(small: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling by an integer ``factor`` (pixel centres aligned, edges clamped)."""
    out = small
    for axis in (0, 1):
        n = out.shape[axis]
        pos = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0.0, n - 1.0)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        t = pos - i0
        a, b = np.take(out, i0, axis=axis), np.take(out, i1, axis=axis)
        t = t[:, None] if axis == 0 else t[None, :]
        out = a * (1.0 - t) + b * t
    return out


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, factor: int = 1
) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma`` px, scaled to zero mean and unit std.

    Periodic at the borders, which is harmless for a random texture. ``factor`` > 1 draws it on a grid
    that much coarser and upsamples: the same look for wide sigmas at a fraction of the FFT cost.
    """
    small = (shape[0] // factor, shape[1] // factor)
    spectrum = np.fft.rfft2(rng.standard_normal(small)) * gaussian_transfer(small, sigma / factor)
    out = np.fft.irfft2(spectrum, s=small)
    if factor > 1:
        out = upsample(out, factor)
    out -= out.mean()
    return out / (out.std() + 1e-12)


class Blurrer:
    """Gaussian blurs of one image at several sigmas, sharing one forward FFT.

    The image is reflect-padded first (as ``scipy.ndimage.gaussian_filter`` does) so that a wide
    defocus blur does not wrap the bottom edge onto the top.
    """

    def __init__(self, image: np.ndarray) -> None:
        self.shape = image.shape
        h, w = image.shape
        self.padded_shape = (fast_len(h + 2 * _PAD), fast_len(w + 2 * _PAD))
        ph, pw = self.padded_shape
        padded = np.pad(image, ((_PAD, ph - h - _PAD), (_PAD, pw - w - _PAD)), mode="reflect")
        self.spectrum = np.fft.rfft2(padded)

    def blur(self, sigma: float) -> np.ndarray:
        """Return the image blurred by a Gaussian of ``sigma`` pixels (same shape)."""
        return self.filter(gaussian_transfer(self.padded_shape, sigma))

    def filter(self, transfer: np.ndarray) -> np.ndarray:
        """Return the image filtered by ``transfer`` (an ``rfft2``-grid transfer function; same shape)."""
        out = np.fft.irfft2(self.spectrum * transfer, s=self.padded_shape)
        h, w = self.shape
        return out[_PAD : _PAD + h, _PAD : _PAD + w]


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels with reflected borders."""
    return Blurrer(image).blur(sigma)


def blur_wide(image: np.ndarray, sigma: float, factor: int = 4) -> np.ndarray:
    """Gaussian blur for wide sigmas (haze): on ``factor``-binned pixels, then upsampled."""
    h, w = image.shape
    binned = image.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    return upsample(blur(binned, sigma / factor), factor)


def camera(expected: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Expected ADU above offset -> 12-bit camera image (Poisson shot + Gaussian read noise)."""
    signal = np.maximum(expected, 0.0)
    if rng is None:
        adu = OFFSET + signal
    else:
        electrons = rng.poisson(signal / _GAIN)
        adu = OFFSET + _GAIN * electrons + rng.normal(0.0, _READ_NOISE, signal.shape)
    return np.clip(np.rint(adu), 0, SATURATION).astype(np.uint16)


def defocus_radius(z: int) -> float:
    """Radius in pixels of the geometric defocus disk of slice ``z`` (0 at focus).

    ``|z - 16| x 2 µm x tan(asin(0.45)) / 0.645 µm per px``: 1.56 px per slice above focus, 0.85 of
    that below (about 21.3 px at z0 and 26.5 px at z33).
    """
    per_slice = _DISK_PX_PER_SLICE * (1.0 if z >= FOCUS_Z else _BELOW_FOCUS_FACTOR)
    return float(per_slice * abs(z - FOCUS_Z))


def _disk_transfer(shape: tuple[int, int], radius: float, oversample: int = 4) -> np.ndarray:
    """The ``rfft2``-grid transfer function of a unit-sum uniform disk of ``radius`` pixels.

    The disk is drawn on the pixel grid with ``oversample``-fold sub-pixel coverage (so a small
    radius grows smoothly, not pixel by pixel) and transformed; numpy only (no Bessel function needed).
    """
    if radius <= 0:
        return np.ones((shape[0], shape[1] // 2 + 1))
    reach = int(np.ceil(radius)) + 1
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    offs = np.arange(-reach, reach + 1)
    yy = (offs[:, None, None, None] + sub[None, None, :, None]) ** 2
    xx = (offs[None, :, None, None] + sub[None, None, None, :]) ** 2
    kernel = ((yy + xx) <= radius**2).mean(axis=(2, 3))
    kernel /= kernel.sum()
    grid = np.zeros(shape)
    for i, dy in enumerate(offs):  # centred on pixel (0, 0), wrapped: a zero-phase filter
        grid[dy % shape[0], offs % shape[1]] += kernel[i]
    return np.fft.rfft2(grid)


def defocus_transfer(shape: tuple[int, int], z: int) -> np.ndarray:
    """Transfer function of slice ``z``: the in-focus spot times the defocus disk (``rfft2`` grid)."""
    return gaussian_transfer(shape, _PSF_SIGMA) * _disk_transfer(shape, defocus_radius(z))
