"""Perturbation ladders: identity at level 0, hand-computed cases, an independent blur, monotone ladders."""

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval import perturb
from indexer.images.decode import decode_tiff

NAMES = list(perturb.PERTURBATIONS)


@pytest.fixture(scope="module")
def image(real_images):
    # A real BBBC006 w2 z16 image: 520 x 696 uint16, 12-bit, about 1.4 % saturated pixels.
    return decode_tiff(real_images[0].read_bytes())


def _rng(seed=0):
    return np.random.default_rng(seed)


def _hf_energy(x):
    # Mean absolute difference between neighbouring pixels: falls as blur removes high frequencies.
    x = x.astype(np.float64)
    return float(np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=0)).mean())


# --- registry and validation ------------------------------------------------------------------------


def test_ladder_table():
    expected = {
        "gaussian_noise": (0.0, (10, 25, 50, 100, 200)),
        "poisson_noise": (math.inf, (1000, 300, 100, 30, 10)),
        "gaussian_blur": (0.0, (0.5, 1, 2, 4, 8)),
        "brightness": (1.0, (1.1, 1.25, 1.5, 2, 3)),
        "contrast": (1.0, (0.9, 0.8, 0.65, 0.5, 0.35)),
        "translate_crop": (1.0, (0.95, 0.9, 0.8, 0.7, 0.5)),
    }
    assert {n: (p.identity, p.levels) for n, p in perturb.PERTURBATIONS.items()} == expected
    for name, (identity, levels) in expected.items():
        assert [perturb.severity_value(name, s) for s in range(6)] == [identity, *map(float, levels)]
        # every ladder moves one way, away from the identity
        steps = np.diff([identity, *levels]) if math.isfinite(identity) else np.diff(levels)
        assert np.all(steps > 0) or np.all(steps < 0)


def test_unknown_name_and_bad_severity(image):
    with pytest.raises(ValueError, match="unknown perturbation 'fog'; choose from: gaussian_noise, poisson"):
        perturb.apply("fog", image, 1, _rng())
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb.severity_value("defocus_z", 1)  # natural, not an array function
    for bad in (6, -1, 2.0, True, "1"):
        with pytest.raises(ValueError, match=r"severity must be an integer in 0\.\.5"):
            perturb.apply("gaussian_blur", image, bad, _rng())
        with pytest.raises(ValueError, match="severity"):
            perturb.severity_value("gaussian_blur", bad)
    assert perturb.severity_value("gaussian_blur", np.int64(3)) == 2.0
    with pytest.raises(ValueError, match="2-D"):
        perturb.apply("gaussian_blur", np.zeros((2, 3, 4), np.uint16), 1, _rng())
    with pytest.raises(ValueError, match="5 levels"):
        perturb.Perturbation("x", "u", (1, 2), perturb.brightness, 1.0)
    for fn, bad in ((perturb.gaussian_noise, -1), (perturb.poisson_noise, 0), (perturb.brightness, 0),
                    (perturb.contrast, -0.5), (perturb.translate_crop, 1.5), (perturb.gaussian_blur, -1)):  # fmt: skip
        with pytest.raises(ValueError, match="must be"):
            fn(image, bad, _rng())


# --- level 0 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_level_0_is_bit_identical_and_draws_nothing(image, name):
    rng = _rng(5)
    before = rng.bit_generator.state
    out = perturb.apply(name, image, 0, rng)
    assert out is not image and out.dtype == image.dtype and np.array_equal(out, image)
    assert rng.bit_generator.state == before
    # also for a non-BBBC006 image: 16-bit values above the 12-bit saturation, and a float image
    wide = np.array([[0, 4095, 40000, 65535]], np.uint16)
    assert np.array_equal(perturb.apply(name, wide, 0, rng), wide)
    flt = np.array([[0.5, -1.0], [3.25, 1e9]])
    same = perturb.apply(name, flt, 0, rng)
    assert same.dtype == flt.dtype and np.array_equal(same, flt)
    # the function at its identity parameter is the identity too
    p = perturb.PERTURBATIONS[name]
    assert np.array_equal(p.fn(image, p.identity, rng, 4095), image)


@pytest.mark.parametrize("name", NAMES)
def test_every_level_is_uint16_in_range(image, name):
    for sev in range(1, 6):
        out = perturb.apply(name, image, sev, perturb.perturbation_rng(0, 1, name, sev))
        assert out.dtype == np.uint16 and out.max() <= 4095
        if name != "translate_crop":
            assert out.shape == image.shape
    small = perturb.apply(name, image, 3, _rng(), saturation=1000)
    assert small.max() <= 1000


# --- hand-computed cases -------------------------------------------------------------------------------


def test_brightness_by_hand():
    im = np.array([[0, 100, 2000, 3000, 4095]], np.uint16)
    # x1.5: 0, 150, 3000, 4500 -> 4095 (clipped), 6142.5 -> 4095
    assert perturb.brightness(im, 1.5).tolist() == [[0, 150, 3000, 4095, 4095]]
    # x1.1: 110, 2200, 3300, 4504.5 -> 4095
    assert perturb.apply("brightness", im, 1, _rng()).tolist() == [[0, 110, 2200, 3300, 4095]]
    # dimming is not on the ladder but the function takes it: x0.5 -> 0, 50, 1000, 1500, 2047.5 -> 2048
    assert perturb.brightness(im, 0.5).tolist() == [[0, 50, 1000, 1500, 2048]]


def test_contrast_by_hand():
    im = np.array([[0, 25, 64, 100, 81]], np.uint16)
    # saturation 100, gamma 0.5: 100 * sqrt(x / 100) = 0, 50, 80, 100, 90
    assert perturb.contrast(im, 0.5, saturation=100).tolist() == [[0, 50, 80, 100, 90]]
    # ladder level 4 is gamma 0.5 at 4095: 4095 * sqrt(1023.75 / 4095) = 2047.5; input 1024 -> 2047.75 -> 2048
    assert perturb.apply("contrast", np.array([[1024, 4095, 0]], np.uint16), 4, _rng()).tolist() == [
        [2048, 4095, 0]
    ]


def test_gaussian_noise_on_flat_field():
    flat = np.full((300, 300), 1000, np.uint16)
    out = perturb.gaussian_noise(flat, 50.0, _rng(1)).astype(np.float64)
    d = out - 1000
    # 90,000 draws of N(0, 50): the sample std is within 1 % of 50, the mean within 1 count of 0
    assert d.std() == pytest.approx(50, rel=0.01) and abs(d.mean()) < 1
    # noise on raw counts keeps its negative half (the notebook's clip to [0, 1] dropped it)
    assert (d < 0).mean() == pytest.approx(0.5, abs=0.01)
    # counts are whole numbers
    assert np.array_equal(out, np.rint(out))


def test_noise_clips_at_zero_and_keeps_saturated_pixels():
    im = np.zeros((100, 100), np.uint16)
    im[:, 50:] = 4095
    for name in ("gaussian_noise", "poisson_noise"):
        out = perturb.apply(name, im, 5, _rng(2))
        assert np.all(out[:, 50:] == 4095)  # true signal above full scale: stays clipped
        assert out.min() == 0 and out.dtype == np.uint16
    # zero signal: Gaussian noise clips its negative half at 0 (about half the pixels), Poisson gives 0
    assert (perturb.apply("gaussian_noise", im, 3, _rng(2))[:, :50] == 0).mean() == pytest.approx(
        0.5, abs=0.03
    )
    assert np.all(perturb.apply("poisson_noise", im, 3, _rng(2))[:, :50] == 0)


def test_poisson_noise_mean_variance_and_quantisation():
    flat = np.full((300, 300), 2000, np.uint16)
    out = perturb.poisson_noise(flat, 100.0, _rng(3)).astype(np.float64)
    # 100 photons at 4095 counts: gain g = 100 / 4095 photons per count; lambda = 2000 g = 48.84 photons.
    # var(counts / g) = lambda / g^2 = 2000 / g = 2000 * 40.95 = 81,900 -> std 286.2
    assert out.mean() == pytest.approx(2000, rel=0.01)
    assert out.std() == pytest.approx(math.sqrt(2000 * 40.95), rel=0.02)
    # every output is a whole number of photons times 40.95 counts, rounded to a count
    photons = np.unique(out) / 40.95
    assert np.all(np.abs(photons - np.rint(photons)) < 0.5 / 40.95 + 1e-9)


def test_blur_by_hand_and_against_independent_convolution():
    delta = np.zeros((41, 41), np.uint16)
    delta[20, 20] = 1000
    out = perturb.gaussian_blur(delta, 1.0)
    # centre weight of a normalised 2-D Gaussian, sigma 1: 1 / (2 pi) = 0.15915 (truncation at 4 sigma
    # changes it by < 1e-4) -> 159.15 -> 159; the mass of 1000 counts is kept up to rounding
    assert out[20, 20] == 159 and abs(int(out.sum()) - 1000) < 10
    assert np.array_equal(out, out.T) and np.array_equal(out, out[::-1, ::-1])  # isotropic

    # Independent: separable kernel truncated at round(4 sigma), numpy 'symmetric' padding (= ndimage's
    # 'reflect'), direct sums.
    rng = _rng(4)
    im = rng.integers(0, 4096, (23, 31)).astype(np.uint16)
    sigma = 1.5
    r = round(4 * sigma)
    x = np.arange(-r, r + 1)
    w = np.exp(-(x**2) / (2 * sigma**2))
    w /= w.sum()
    p = np.pad(im.astype(np.float64), r, mode="symmetric")
    rows = sum(w[i] * p[:, i : i + im.shape[1]] for i in range(2 * r + 1))
    ref = sum(w[i] * rows[i : i + im.shape[0], :] for i in range(2 * r + 1))
    got = perturb.gaussian_blur(im, sigma).astype(np.float64)
    assert np.max(np.abs(got - np.clip(np.rint(ref), 0, 4095))) <= 1  # rounding at .5 only


def test_translate_crop_is_a_window_of_the_image(image):
    h, w = image.shape  # 520 x 696
    for sev, (ch, cw) in zip(range(1, 6), [(494, 661), (468, 626), (416, 557), (364, 487), (260, 348)]):
        # round(520 * 0.95) = 494, round(696 * 0.95) = 661.2 -> 661, ...; 0.5 -> 260 x 348
        out = perturb.apply(
            "translate_crop", image, sev, perturb.perturbation_rng(0, 9, "translate_crop", sev)
        )
        assert out.shape == (ch, cw)
        # find the offset by the first row, then check the whole window
        hits = [(y, x) for y in range(h - ch + 1) for x in range(w - cw + 1)
                if image[y, x] == out[0, 0] and np.array_equal(image[y, x : x + cw], out[0])]  # fmt: skip
        assert any(np.array_equal(image[y : y + ch, x : x + cw], out) for y, x in hits)
    tiny = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert perturb.translate_crop(tiny, 0.01, _rng()).shape == (1, 1)  # never empty
    offsets = {perturb.translate_crop(tiny, 0.5, _rng(s)).tolist()[0][0] for s in range(40)}
    assert len(offsets) > 1  # the offset is random, not always the centre


# --- determinism ---------------------------------------------------------------------------------------


def test_perturbation_rng_is_stable_and_distinct():
    def draw(*args):
        return perturb.perturbation_rng(*args).integers(0, 2**62, 4).tolist()

    # the seed words are explicit: CRC-32 of the name, not Python's per-process hash()
    ref = np.random.default_rng([7, 123, 0, zlib.crc32(b"gaussian_noise"), 3]).integers(0, 2**62, 4).tolist()
    assert draw(7, 123, "gaussian_noise", 3) == ref
    big = 2**62 + 5  # content ids use 63 bits: low and high words both count
    assert draw(7, big, "gaussian_noise", 3) == (
        np.random.default_rng([7, 5, 2**30, zlib.crc32(b"gaussian_noise"), 3]).integers(0, 2**62, 4).tolist()
    )
    variants = [(7, 123, "gaussian_noise", 3), (8, 123, "gaussian_noise", 3), (7, 124, "gaussian_noise", 3),
                (7, 123, "poisson_noise", 3), (7, 123, "gaussian_noise", 4), (7, 123 + 2**32, "gaussian_noise", 3)]  # fmt: skip
    assert len({tuple(draw(*v)) for v in variants}) == len(variants)
    assert draw(0, -1, "x", 0) == draw(0, 2**64 - 1, "x", 0)  # negative ids wrap to 64 bits
    with pytest.raises(ValueError, match="seed"):
        perturb.perturbation_rng(-1, 0, "x", 0)


@pytest.mark.parametrize("name", ["gaussian_noise", "poisson_noise", "translate_crop"])
def test_same_seed_same_image_other_seed_other_image(image, name):
    def run(seed):
        return perturb.apply(name, image, 3, perturb.perturbation_rng(seed, 123, name, 3))

    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8)) or run(7).shape != run(8).shape


# --- monotone ladders on a real image ------------------------------------------------------------------


def test_blur_removes_high_frequencies_monotonically(image):
    energy = [_hf_energy(perturb.apply("gaussian_blur", image, s, _rng())) for s in range(6)]
    assert all(a > b for a, b in zip(energy, energy[1:]))
    # sigma 8 px leaves little: under a fifth of the sharp image's neighbour differences
    assert energy[5] < 0.2 * energy[0]


def test_noise_grows_with_level(image):
    mid = (image > 300) & (image < 3500)  # away from both clips
    gauss, shot = [], []
    for sev in range(1, 6):
        d = perturb.apply("gaussian_noise", image, sev, _rng(sev)).astype(np.float64) - image
        gauss.append(d[mid].std())
        e = perturb.apply("poisson_noise", image, sev, _rng(sev)).astype(np.float64) - image
        shot.append(e[mid].std())
    assert all(a < b for a, b in zip(gauss, gauss[1:])) and all(a < b for a, b in zip(shot, shot[1:]))
    # the measured std is the ladder's sigma: 10, 25, 50, 100, 200 counts (within 2 %)
    np.testing.assert_allclose(gauss, [10, 25, 50, 100, 200], rtol=0.02)


def test_brightness_scales_and_saturates(image):
    f = image.astype(np.float64)
    sat_frac, means = [], []
    for sev, factor in zip(range(1, 6), (1.1, 1.25, 1.5, 2.0, 3.0)):
        out = perturb.apply("brightness", image, sev, _rng())
        below = f * factor < 4094.5
        # below saturation the counts scale exactly (to the nearest count); above, they clip
        assert np.array_equal(out[below], np.rint(f[below] * factor).astype(np.uint16))
        assert np.all(out[~below] == 4095)
        sat_frac.append((out == 4095).mean())
        means.append(out.mean())
    assert all(a < b for a, b in zip(sat_frac, sat_frac[1:])) and all(a < b for a, b in zip(means, means[1:]))
    assert sat_frac[0] > (image == 4095).mean()


def test_contrast_lifts_dim_pixels_monotonically(image):
    means = [perturb.apply("contrast", image, s, _rng()).mean() for s in range(6)]
    assert all(a < b for a, b in zip(means, means[1:]))  # gamma 1 > 0.9 > ... > 0.35
    out = perturb.apply("contrast", image, 5, _rng())
    assert np.all(out >= image)  # x^gamma >= x on [0, 1] for gamma < 1, pixel by pixel


# --- properties ----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(NAMES),
    st.integers(0, 5),
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.integers(1, 12),
)
def test_any_image_any_level_stays_in_range(name, sev, seed, h, w):
    im = np.random.default_rng(seed).integers(0, 4096, (h, w)).astype(np.uint16)
    out = perturb.apply(name, im, sev, perturb.perturbation_rng(seed, 0, name, sev))
    assert out.dtype == np.uint16 and out.max(initial=0) <= 4095 and out.size >= 1
    assert out.shape == im.shape or name == "translate_crop"


# --- natural perturbation: real z-slices ---------------------------------------------------------------


@dataclass
class Rec:
    id: int
    plate: str | None
    well: str | None
    site: int | None
    channel: str | None
    z: int | None


def test_z_pairs_by_hand():
    recs = [
        {"id": 1, "plate": "p", "well": "a01", "site": 1, "channel": "2", "z": 16},
        {"id": 2, "plate": "p", "well": "a01", "site": 1, "channel": "2", "z": 18},  # +2 slices
        {"id": 3, "plate": "p", "well": "a01", "site": 1, "channel": "2", "z": 10},  # -6
        {"id": 7, "plate": "p", "well": "a01", "site": 1, "channel": "2", "z": 14},  # -2: ties 2 by |dz|
        {"id": 4, "plate": "p", "well": "a01", "site": 2, "channel": "2", "z": 18},  # other site
        {"id": 5, "plate": "p", "well": "a01", "site": 1, "channel": "1", "z": 18},  # other channel
        {"id": 8, "plate": "q", "well": "a01", "site": 1, "channel": "2", "z": 12},  # other plate
        {"id": 6, "plate": "p", "well": None, "site": None, "channel": None, "z": 16},  # unknown site
        {"id": 9, "plate": "p", "well": None, "site": None, "channel": None, "z": 12},
        {"id": 10, "plate": "p", "well": "b02", "site": 1, "channel": "2", "z": 16},  # no partner
    ]
    # nearest slice first, ties by id; unknown fields never pair (two unknown wells are not one well)
    assert perturb.z_pairs(recs) == {1: [(2, 2), (7, 2), (3, 6)], 10: []}
    # another reference slice; objects with attributes work the same
    objs = [Rec(**r) for r in recs]
    assert perturb.z_pairs(objs, reference_z=18) == {2: [(1, 2), (7, 4), (3, 8)], 4: [], 5: []}


def test_defocus_offset_um():
    # BBBC006: z16 in focus, 2 um per slice, lower numbers below focus
    assert perturb.defocus_offset_um(16) == 0.0
    assert perturb.defocus_offset_um(10) == -12.0 and perturb.defocus_offset_um(33) == 34.0
    assert perturb.defocus_offset_um(3, focus=5, step_um=0.5) == -1.0
