import numpy as np
import pytest
import torch

from indexer.core.config import IntensityConfig, PreprocessConfig
from indexer.core.errors import ConfigError
from indexer.images.decode import decode_tiff
from indexer.model.preprocess import (
    dataset_window,
    normalise_intensity,
    prepare_plane,
    preprocess,
    preprocess_image,
    sample_pixels,
    standardise,
    target_size,
    to_model_input,
)


def test_percentile_window_matches_numpy(real_images):
    image = decode_tiff(real_images[0].read_bytes())
    out = normalise_intensity(torch.from_numpy(image.astype(np.float32))[None], IntensityConfig())[0].numpy()
    lo, hi = np.percentile(image.astype(np.float64), [1.0, 99.8])
    expected = np.clip((image - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert (out == 0).mean() == pytest.approx((image <= lo).mean(), abs=1e-6)


def test_integer_histogram_path_equals_numpy_percentiles_exactly(real_images):
    from indexer.model.preprocess import histogram_quantiles

    for p in real_images[:4]:
        image = decode_tiff(p.read_bytes())
        for qs in [(0.01, 0.998), (0.0, 1.0), (0.5, 0.25)]:
            got = histogram_quantiles(torch.from_numpy(image.astype(np.int64)), qs).double().numpy()
            np.testing.assert_allclose(got, np.percentile(image, [q * 100 for q in qs]), rtol=0, atol=1e-3)
    ints = torch.from_numpy(decode_tiff(real_images[0].read_bytes()).astype(np.int32))[None]
    torch.testing.assert_close(
        normalise_intensity(ints, IntensityConfig()), normalise_intensity(ints.float(), IntensityConfig())
    )


def test_fixed_window_defaults_to_12_bit():
    cfg = IntensityConfig(mode="fixed")
    assert cfg.window == (0.0, 4095.0)
    x = torch.tensor([[[0.0, 4095.0, 8190.0, 2047.5]]])
    np.testing.assert_allclose(normalise_intensity(x, cfg)[0, 0].numpy(), [0, 1, 1, 0.5])


def test_constant_image_gives_zeros_not_nan():
    x = torch.full((2, 32, 32), 1234.0)
    out = normalise_intensity(x, IntensityConfig())
    assert torch.isfinite(out).all() and (out == 0).all()


def test_dataset_window_pools_samples():
    a = np.arange(0, 1000, dtype=np.uint16)
    b = np.arange(1000, 2000, dtype=np.uint16)
    lo, hi = dataset_window([a, b], 0, 100)
    assert (lo, hi) == (0.0, 1999.0)
    assert len(sample_pixels(np.zeros((520, 696)), 1000)) <= 1000


def test_dataset_mode_needs_window():
    from indexer.core.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset"):
        normalise_intensity(torch.zeros(1, 4, 4), IntensityConfig(mode="dataset"))


def test_target_size_square_and_keep_aspect():
    cfg = PreprocessConfig()
    assert target_size(520, 696, cfg) == (224, 224)
    keep = PreprocessConfig(resize="keep-aspect")
    h, w = target_size(520, 696, keep)
    assert h == 224 and w % 16 == 0 and abs(w / h - 696 / 520) < 16 / 224


def test_model_input_mean_std_and_channels():
    cfg = PreprocessConfig(image_size=(32, 32), image_mean=(0.5, 0.4, 0.3), image_std=(0.5, 0.2, 0.1))
    unit = torch.full((1, 32, 32), 0.5)
    x = to_model_input(unit, cfg)
    assert x.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [0.0, 0.5, 2.0], atol=1e-6)


def test_resize_matches_pil_antialiased_bilinear(real_images):
    from PIL import Image

    image = decode_tiff(real_images[0].read_bytes())
    unit = normalise_intensity(torch.from_numpy(image.astype(np.float32))[None], IntensityConfig())
    cfg = PreprocessConfig(image_mean=(0, 0, 0), image_std=(1, 1, 1))
    ours = to_model_input(unit, cfg)[0, 0].numpy()
    ref = np.asarray(Image.fromarray(unit[0].numpy(), mode="F").resize((224, 224), Image.BILINEAR))
    assert np.abs(ours - ref).mean() < 2e-3
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.999


def test_batch_equals_single(real_images):
    images = [decode_tiff(p.read_bytes()) for p in real_images[:3]]
    cfg = PreprocessConfig()
    batch = preprocess(torch.from_numpy(np.stack(images).astype(np.float32)), cfg)
    for i, im in enumerate(images):
        torch.testing.assert_close(batch[i], preprocess_image(im, cfg))


def test_config_validation():
    with pytest.raises(ConfigError):
        IntensityConfig(low=50, high=10)
    with pytest.raises(ConfigError):
        IntensityConfig(mode="fixed", window=(10, 5))
    with pytest.raises(ConfigError):
        PreprocessConfig(image_size=(100, 100), patch_size=16)
    with pytest.raises(ConfigError):
        IntensityConfig(mode="nope")


def _preprocess_as_before(image: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """The build's preprocessing before it kept one plane per image: the reference it must equal."""
    import torch.nn.functional as F

    t = torch.from_numpy(image.astype(np.int32))[None]
    lo, hi = (torch.tensor(np.percentile(image, q), dtype=torch.float32).view(1, 1, 1)
              for q in (cfg.intensity.low, cfg.intensity.high))  # fmt: skip
    unit = ((t.float() - lo) / (hi - lo).clamp_min(1e-6)).clamp_(0.0, 1.0)
    x = F.interpolate(unit[None], size=cfg.image_size, mode="bilinear", align_corners=False, antialias=True)
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.image_std).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


def test_a_prepared_plane_is_one_channel_and_standardised_per_batch_to_the_same_input(real_images):
    """A build's decode workers hand over one resized plane per image (200 KB at 224 px), not the model's
    three standardised channels (600 KB): the decode window holds a third. The batch then made from the
    planes equals the reference preprocessing bit for bit."""
    cfg = PreprocessConfig()
    images = [decode_tiff(p.read_bytes()) for p in real_images[:4]]
    planes = [prepare_plane(im, cfg) for im in images]
    assert all(p.shape == (1, 224, 224) and p.dtype == torch.float32 for p in planes)
    batch = standardise(torch.stack(planes), cfg)
    assert batch.shape == (4, 3, 224, 224)
    for i, im in enumerate(images):
        assert torch.equal(batch[i], _preprocess_as_before(im, cfg))
        assert torch.equal(preprocess_image(im, cfg), batch[i])


def test_preprocessing_leaves_a_float_input_unchanged(real_images):
    """The intensity window is applied in place on a copy, never on the caller's pixels."""
    image = decode_tiff(real_images[0].read_bytes()).astype(np.float32)
    before = image.copy()
    preprocess_image(image, PreprocessConfig())
    t = torch.from_numpy(image)[None]
    normalise_intensity(t, IntensityConfig())
    assert np.array_equal(image, before) and np.array_equal(t[0].numpy(), before)
