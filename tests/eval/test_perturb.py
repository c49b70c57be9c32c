import numpy as np
import pytest

from eval import perturb
from indexer.decode import decode_tiff


@pytest.fixture(scope="module")
def image(real_images):
    return decode_tiff(real_images[0].read_bytes())


def _hf_energy(x):
    x = x.astype(np.float64)
    return float(np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=0)).mean())


@pytest.mark.parametrize("name", list(perturb.PERTURBATIONS))
def test_level_0_is_identity_and_dtype_kept(image, name):
    out = perturb.apply(name, image, 0, np.random.default_rng(0))
    assert np.array_equal(out, image) and out is not image
    for sev in range(1, 6):
        o = perturb.apply(name, image, sev, perturb.perturbation_rng(0, 1, name, sev))
        assert o.dtype == np.uint16 and o.max() <= 4095


def test_noise_grows_with_severity_and_keeps_negative_excursions(image):
    diffs = []
    for sev in range(1, 6):
        out = perturb.apply("gaussian_noise", image, sev, np.random.default_rng(sev))
        d = out.astype(float) - image
        diffs.append(d[(image > 300) & (image < 3500)].std())
        # noise is added to counts before normalisation: about half the changes are negative
        assert 0.4 < (d[(image > 300) & (image < 3500)] < 0).mean() < 0.6
    assert all(a < b for a, b in zip(diffs, diffs[1:]))
    assert diffs[0] == pytest.approx(10, rel=0.1) and diffs[3] == pytest.approx(100, rel=0.1)


def test_blur_and_shot_noise_monotone(image):
    blur = [_hf_energy(perturb.apply("gaussian_blur", image, s, np.random.default_rng(0))) for s in range(6)]
    assert all(a > b for a, b in zip(blur, blur[1:]))
    err = [np.abs(perturb.apply("poisson_noise", image, s, np.random.default_rng(0)).astype(float) - image).mean()
           for s in range(1, 6)]  # fmt: skip
    assert all(a < b for a, b in zip(err, err[1:]))


def test_brightness_contrast_and_crop(image):
    dim = perturb.apply("brightness", image, 1, np.random.default_rng(0))
    assert dim.mean() == pytest.approx(image.mean() * 0.8, rel=0.01)
    bright = perturb.apply("brightness", image, 5, np.random.default_rng(0))
    assert (bright == 4095).mean() > (image == 4095).mean()
    gamma = perturb.apply("contrast", image, 5, np.random.default_rng(0))
    assert gamma.mean() > image.mean()  # gamma < 1 lifts mid-tones
    crop = perturb.apply("translate_crop", image, 5, np.random.default_rng(0))
    assert crop.shape == (260, 348)


def test_determinism_and_errors(image):
    a = perturb.apply("gaussian_noise", image, 3, perturb.perturbation_rng(7, 123, "gaussian_noise", 3))
    b = perturb.apply("gaussian_noise", image, 3, perturb.perturbation_rng(7, 123, "gaussian_noise", 3))
    c = perturb.apply("gaussian_noise", image, 3, perturb.perturbation_rng(8, 123, "gaussian_noise", 3))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb.apply("fog", image, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="severity"):
        perturb.apply("gaussian_blur", image, 6, np.random.default_rng(0))
    assert perturb.severity_value("gaussian_blur", 3) == 2.0


def test_z_pairs_and_offsets():
    recs = [
        {"id": 1, "plate": "p", "well": "A01", "site": 1, "channel": "w2", "z": 16},
        {"id": 2, "plate": "p", "well": "A01", "site": 1, "channel": "w2", "z": 18},
        {"id": 3, "plate": "p", "well": "A01", "site": 1, "channel": "w2", "z": 10},
        {"id": 4, "plate": "p", "well": "A01", "site": 2, "channel": "w2", "z": 18},
        {"id": 5, "plate": "p", "well": "A01", "site": 1, "channel": "w1", "z": 18},
        {"id": 6, "plate": "p", "well": None, "site": None, "channel": None, "z": 16},
    ]
    assert perturb.z_pairs(recs) == {1: [(2, 2), (3, 6)]}
    assert perturb.defocus_offset_um(10) == -12.0 and perturb.defocus_offset_um(16) == 0.0
