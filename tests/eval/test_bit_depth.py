"""One severity is one degradation whatever the bit depth: perturbations in each image type's own
intensity scale (eval.intensity), from the pixel rules to a robustness run on 8- and 16-bit copies."""

import numpy as np
import pytest
import tifffile

from eval import intensity, perturb
from eval.robustness import RobustnessConfig, run_robustness
from indexer.images.decode import decode_tiff
from retriever.search import Retriever

DEPTHS = {"8": (np.uint8, 255), "12": (np.uint16, 4095), "16": (np.uint16, 65535)}


def _as_depth(image12: np.ndarray, depth: str) -> np.ndarray:
    dtype, full = DEPTHS[depth]
    return np.rint(image12.astype(np.float64) * full / 4095).astype(dtype)


@pytest.fixture(scope="module")
def image(real_images):
    return decode_tiff(real_images[0].read_bytes())


def test_scale_rules():
    assert intensity.scale_of([np.zeros((4, 4), np.uint8)]).full_scale == 255
    assert intensity.scale_of([np.full((4, 4), 4095, np.uint16)]).full_scale == 4095
    # a dim 16-bit image is 16-bit when its siblings of the same type go above 4095
    dim, bright = np.full((4, 4), 300, np.uint16), np.full((4, 4), 40000, np.uint16)
    assert intensity.scale_of([dim]).full_scale == 4095
    assert [s.full_scale for s in intensity.scales_by_type([dim, bright], ["x", "x"])] == [65535, 65535]
    assert [s.full_scale for s in intensity.scales_by_type([dim, bright], ["x", "y"])] == [4095, 65535]
    assert intensity.scale_of([np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)]).full_scale == 1.0
    assert intensity.scale_of([np.array([[0.0, 3000.0]], np.float32)]).full_scale == 4095
    assert intensity.scale_of([dim], declared=1023).full_scale == 1023


def test_a_declared_scale_is_read_from_the_file(tmp_path):
    path = tmp_path / "ten_bit.tif"
    tifffile.imwrite(path, np.full((32, 32), 700, np.uint16), extratags=[(281, "H", 1, 1023, False)])
    assert intensity.declared_full_scale_at(str(path)) == 1023
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.full((32, 32), 700, np.uint16))
    assert intensity.declared_full_scale_at(str(plain)) is None
    assert intensity.declared_full_scale_at(str(tmp_path / "gone.tif")) is None


@pytest.mark.parametrize(
    "name", ["gaussian_noise", "poisson_noise", "brightness", "contrast", "gaussian_blur"]
)
def test_one_severity_is_one_degradation_at_every_bit_depth(image, name):
    # The same picture at 8, 12 and 16 bits and as float in [0, 1], perturbed at each severity with the same
    # seed: as fractions of full scale the results agree up to the 8-bit quantisation (1/255).
    # Before (sigma in counts, clipping at 4095 whatever the image): sigma 200 was 78 % of an 8-bit scale,
    # and x3 exposure never saturated an 8-bit image.
    copies = {d: _as_depth(image, d) for d in DEPTHS}
    copies["float"] = (image / 4095.0).astype(np.float32)
    for sev in range(1, 6):
        unit = {}
        for d, im in copies.items():
            out = perturb.apply(name, im, sev, perturb.perturbation_rng(0, 1, name, sev))
            assert out.dtype == im.dtype
            unit[d] = out.astype(np.float64) / intensity.scale_of([im]).full_scale
        for d in ("8", "16", "float"):
            if name == "poisson_noise":  # shot noise draws differ pixel by pixel: compare its size
                clean = {
                    k: copies[k].astype(np.float64) / intensity.scale_of([copies[k]]).full_scale for k in unit
                }
                sizes = [np.std(unit[k] - clean[k]) for k in (d, "12")]
                assert sizes[0] == pytest.approx(sizes[1], rel=0.05), (name, sev, d, sizes)
                continue
            diff = np.abs(unit[d] - unit["12"])
            assert diff.mean() < 0.004, (name, sev, d, diff.mean())
    if name == "gaussian_noise":
        flat = {d: np.full((200, 200), DEPTHS[d][1] // 4, DEPTHS[d][0]) for d in DEPTHS}
        sd = {d: perturb.apply(name, im, 5, perturb.perturbation_rng(0, 1, name, 5)).std() / DEPTHS[d][1]
              for d, im in flat.items()}  # fmt: skip
        assert sd["8"] == pytest.approx(200 / 4095, rel=0.05) and sd["16"] == pytest.approx(
            200 / 4095, rel=0.02
        )


def test_brightness_saturates_8_bit_images_as_it_does_16_bit_ones(image):
    for sev in (1, 3, 5):
        shares = {}
        for d in DEPTHS:
            im = _as_depth(image, d)
            out = perturb.apply("brightness", im, sev, np.random.default_rng(0))
            shares[d] = float((out == DEPTHS[d][1]).mean())
        assert shares["8"] == pytest.approx(shares["12"], abs=0.01) and shares["16"] == pytest.approx(
            shares["12"], abs=0.01
        )
        assert shares["8"] > 0.01


# --- a robustness run on the same images stored at 8 and at 16 bits -----------------------------------------


@pytest.fixture(scope="module")
def summaries(tmp_path_factory, tiny_model_dir, real_images):
    from click.testing import CliRunner

    from indexer.cli import main as index_main
    from indexer.stores.faiss.store import FaissStore

    root = tmp_path_factory.mktemp("depths")
    out = {}
    for d in ("8", "16"):
        folder = root / f"d{d}" / "BBBC006_v1_images_z_16"
        folder.mkdir(parents=True)
        for p in real_images:
            tifffile.imwrite(folder / p.name, _as_depth(decode_tiff(p.read_bytes()), d))
        idx = root / f"idx{d}"
        r = CliRunner().invoke(index_main, ["build", str(folder.parent), "--index", str(idx), "--model",
                                            str(tiny_model_dir), "--device", "cpu", "--no-progress"])  # fmt: skip
        assert r.exit_code == 0, r.output
        retriever = Retriever.open(FaissStore(idx, read_only=True), device="cpu")
        cfg = RobustnessConfig(perturbations=("gaussian_noise", "brightness"),
                               severities=(0, 3, 5), n_queries=20, k=10, seed=0)  # fmt: skip
        res = run_robustness(retriever, cfg)
        out[d] = (res.gallery, {(e["perturbation"], e["severity"]): e for e in res.summary()})
    return out


def test_8_and_16_bit_copies_agree_at_every_severity(summaries):
    (g8, s8), (g16, s16) = summaries["8"], summaries["16"]
    # the report names each image type's scale
    assert g8["intensity_scales"] == {"real uint8": {"full_scale": 255.0, "dtype": "uint8", "rule": "8-bit",
                                                     "images": 20}}  # fmt: skip
    assert g16["intensity_scales"]["real uint16"]["full_scale"] == 65535.0
    for key, a in s8.items():
        b = s16[key]
        # overlap@10 within sampling error: the two 95 % intervals overlap
        m = "overlap_at_k"
        assert a[f"{m}_low"] <= b[f"{m}_high"] + 1e-9 and b[f"{m}_low"] <= a[f"{m}_high"] + 1e-9, (
            key,
            a[m],
            b[m],
        )
        # and the embeddings move alike (before: 8-bit brightness drift 0, 8-bit noise drift ~1)
        assert a["drift_cosine"] == pytest.approx(b["drift_cosine"], rel=0.5, abs=2e-3), key
    assert s8[("brightness", 5)]["drift_cosine"] > 0.5 * s16[("brightness", 5)]["drift_cosine"] > 0
