"""The synthetic BBBC006 look-alike: real naming and TIFF layout, 12-bit camera values, defocus with z,
determinism per seed, independence of what else is requested, and recoverable phenotypes."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from indexer.bbbc006.constants import SATURATION
from indexer.bbbc006.names import parse_path
from indexer.bbbc006.synthetic import (
    GROUND_TRUTH_COLUMNS,
    GROUND_TRUTH_NAME,
    PHENOTYPE_CLASSES,
    SyntheticConfig,
    defocus_radius,
    generate,
    image_path,
    render_site,
    well_phenotype,
    well_range,
)
from indexer.core.errors import ConfigError
from indexer.images.decode import image_source

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Twelve wells whose seed-0 phenotypes cover all four classes.
PHENOTYPE_WELLS = ("A01", "A02", "A03", "A05", "A06", "A08", "A10", "A11", "B02", "B05", "B07", "B08")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tif"))}


def _spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[SyntheticConfig, Path]:
    out = tmp_path_factory.mktemp("synth") / "set"
    config = SyntheticConfig(out, wells=("a01", "C03"), sites=(1,), channels=(1, 2), z_slices=(12, 16))
    summary = generate(config)
    assert summary.n_images == 8 and summary.ground_truth == out / GROUND_TRUTH_NAME
    return config, out


@pytest.fixture(scope="module")
def phenotype_renders():
    return [render_site(w, 1, seed=0, channels=(1, 2), z_slices=(16,)) for w in PHENOTYPE_WELLS]


def test_names_parse_back_to_what_was_asked(small_set):
    config, out = small_set
    files = sorted(out.rglob("*.tif"))
    assert len(files) == 8
    seen = set()
    for p in files:
        m = parse_path(str(p))
        assert m.parsed and m.plate == "mcf-z-stacks-03212011"
        assert p.parent.name == f"BBBC006_v1_images_z_{m.z:02d}"
        assert p.name.split("_")[1] == m.well.lower()  # lower case, as published
        assert UUID_RE.fullmatch(p.name.split("_w", 1)[1][1:-4])
        seen.add((m.well, m.site, m.channel, m.z))
    assert seen == {(w, 1, c, z) for w in ("A01", "C03") for c in ("w1", "w2") for z in (12, 16)}
    # A UUID is random per file: never shared across channels or z-slices of a site.
    assert len({p.name.split("_w", 1)[1][1:] for p in files}) == 8
    assert image_path(out, "A01", 1, 2, 16).is_file()
    # Nothing half-written is left behind.
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_tiff_layout_matches_the_real_files(small_set, real_images):
    _, out = small_set
    synthetic = sorted(out.rglob("*.tif"))[:3]
    for p in [*synthetic, real_images[0]]:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages[0]
            assert tif.byteorder == "<" and len(tif.pages) == 1
            assert page.shape == (520, 696) and page.dtype == np.uint16
            assert page.compression == 5 and page.predictor == 1  # LZW, no predictor
            assert page.rowsperstrip == 11
            names = {t.name for t in page.tags.values()}
            assert "Software" not in names
            assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == 72
            # The one difference: a synthetic image says so (issue 14, provenance); a real one has no
            # description at all.
            if p in synthetic:
                assert "source=synthetic" in page.description
            else:
                assert "ImageDescription" not in names
        assert image_source(p.read_bytes()) == ("synthetic" if p in synthetic else "real")


def test_values_are_12_bit_and_saturate(phenotype_renders):
    sat = []
    for r in phenotype_renders:
        for img in r.images.values():
            assert img.dtype == np.uint16 and img.shape == (520, 696) and img.max() <= SATURATION
        sat.append(float((r.images[(2, 16)] == SATURATION).mean()))
    # Like the real w2 z16 images (0.2-3.3 % of pixels at 4095): some saturate, none flood.
    assert max(sat) > 0.006 and np.median(sat) > 0.002 and max(sat) < 0.06


def test_w2_in_focus_statistics_resemble_the_real_set(phenotype_renders, real_images):
    real = [tifffile.imread(p) for p in real_images]
    real_med = [np.median(a) for a in real]
    synth_med = [np.median(r.images[(2, 16)]) for r in phenotype_renders]
    synth_p1 = [np.percentile(r.images[(2, 16)], 1) for r in phenotype_renders]
    assert 1450 <= min(real_med) and max(real_med) <= 2200  # the facts this generator copies
    assert 1200 <= np.median(synth_med) <= 2200 and min(synth_med) > 900 and max(synth_med) < 2400
    assert 200 <= min(synth_p1) and max(synth_p1) <= 1200


def test_same_seed_same_bytes_other_seed_other_bytes(small_set, tmp_path):
    config, out = small_set
    again = SyntheticConfig(tmp_path / "again", wells=config.wells, sites=config.sites,
                            channels=config.channels, z_slices=config.z_slices)  # fmt: skip
    generate(again)
    assert _files(out) == _files(tmp_path / "again")
    assert (out / GROUND_TRUTH_NAME).read_bytes() == (tmp_path / "again" / GROUND_TRUTH_NAME).read_bytes()

    other = SyntheticConfig(tmp_path / "other", wells=("A01",), sites=(1,), channels=(2,), seed=1)
    generate(other)
    (name, data), = _files(tmp_path / "other").items()  # fmt: skip
    assert name not in _files(out)  # other UUIDs
    a = tifffile.imread(image_path(out, "A01", 1, 2, 16))
    b = tifffile.imread(tmp_path / "other" / name)
    assert np.mean(a != b) > 0.9


def test_parallel_synth_writes_the_same_bytes_as_one_process(small_set, tmp_path):
    """Per-image seeds come from (seed, well, site, channel, z), never from which worker ran first."""
    config, out = small_set
    par = SyntheticConfig(tmp_path / "par", wells=config.wells, sites=config.sites,
                          channels=config.channels, z_slices=config.z_slices)  # fmt: skip
    generate(par, workers=2)
    assert _files(out) == _files(tmp_path / "par")
    assert (out / GROUND_TRUTH_NAME).read_bytes() == (tmp_path / "par" / GROUND_TRUTH_NAME).read_bytes()


def test_a_well_alone_equals_the_same_well_in_a_bigger_set(small_set, tmp_path):
    _, out = small_set
    alone = SyntheticConfig(tmp_path / "alone", wells=("C03",), sites=(1,), channels=(2,), z_slices=(16,))
    generate(alone)
    (name, data), = _files(tmp_path / "alone").items()  # fmt: skip
    assert (out / name).read_bytes() == data
    # The ground truth row too.
    rows = {r["well"]: r for r in csv.DictReader((out / GROUND_TRUTH_NAME).open())}
    (row,) = csv.DictReader((tmp_path / "alone" / GROUND_TRUTH_NAME).open())
    assert rows["C03"] == row


def test_blur_grows_with_distance_from_focus():
    r = render_site("A02", 1, channels=(2,), z_slices=(16, 19, 24, 31, 10))

    def detail(img):  # gradient energy of 4x4 block means: structure, with the pixel noise averaged out
        a = img.astype(float)[:520, :696].reshape(130, 4, 174, 4).mean(axis=(1, 3))
        return float(np.mean(np.diff(a, axis=0) ** 2) + np.mean(np.diff(a, axis=1) ** 2))

    energy = [detail(r.images[(2, z)]) for z in (16, 19, 24, 31)]
    assert (
        energy == sorted(energy, reverse=True) and energy[0] > 2 * energy[1] and energy[2] > 1.5 * energy[3]
    )
    assert [defocus_radius(z) for z in (16, 19, 24, 31)] == sorted(
        defocus_radius(z) for z in (16, 19, 24, 31)
    )
    # Defocus blurs, it does not dim: the mean level stays within a few percent.
    means = [r.images[(2, z)].mean() for z in (16, 19, 24, 31)]
    assert max(means) / min(means) < 1.05
    # Below focus is a different image from the same distance above (z10 vs z22 would be mirror twins).
    assert detail(r.images[(2, 10)]) > detail(r.images[(2, 24)])


def test_noise_is_poisson_like():
    r = render_site("A02", 1, channels=(2,), z_slices=(31,))
    clean = render_site("A02", 1, channels=(2,), z_slices=(31,), noise=False)
    noisy, mean = r.images[(2, 31)].astype(float), clean.images[(2, 31)].astype(float)
    resid = noisy - mean
    assert abs(resid.mean()) < 2.0
    # Variance grows with the signal above the 200 ADU offset, at about 0.65 ADU per ADU.
    lo, hi = mean < np.percentile(mean, 20), mean > np.percentile(mean, 80)
    assert resid[hi].var() > 1.3 * resid[lo].var()
    ratio = resid.var() / np.mean(mean - 200)
    assert 0.5 < ratio < 0.8


def test_ground_truth_rows(tmp_path):
    generate(SyntheticConfig(tmp_path, wells="A01", sites=(1, 2), channels=(1,)))
    generate(SyntheticConfig(tmp_path, wells="B03", sites=(2,), channels=(1,)))  # merged, not replaced
    with (tmp_path / GROUND_TRUTH_NAME).open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == GROUND_TRUTH_COLUMNS
        rows = list(reader)
    assert [(r["well"], r["site"]) for r in rows] == [("A01", "1"), ("A01", "2"), ("B03", "2")]
    for need in ("well", "row", "column", "site", "phenotype_class", "cell_count", "nuclear_radius_px",
                 "intensity_scale", "seed"):  # fmt: skip
        assert need in GROUND_TRUTH_COLUMNS
    a1, a2 = rows[0], rows[1]
    assert (a1["row"], a1["column"], a1["seed"]) == ("A", "1", "0")
    # Both sites of a well share its phenotype; their cells differ.
    assert a1["phenotype_class"] == a2["phenotype_class"] and a1["intensity_scale"] == a2["intensity_scale"]
    assert a1["cell_count"] != a2["cell_count"]
    for r in rows:
        assert r["phenotype_class"] in PHENOTYPE_CLASSES
        assert int(r["cell_count"]) > 20 and 5 < float(r["nuclear_radius_px"]) < 16
    assert well_phenotype("A01").phenotype_class == a1["phenotype_class"]


def test_phenotypes_are_recoverable_from_pixels(phenotype_renders):
    truth = [r.truth for r in phenotype_renders]
    assert {t.phenotype_class for t in truth} == set(PHENOTYPE_CLASSES)
    # Hoechst foreground (pixels well above the ~230 ADU background) tracks count x nuclear area.
    fg = [float((r.images[(1, 16)] > 600).mean()) for r in phenotype_renders]
    area = [t.cell_count * t.nuclear_radius_px**2 for t in truth]
    assert _spearman(fg, area) > 0.85
    # Mean foreground per nucleus tracks nuclear size.
    per_nucleus = [f / t.cell_count for f, t in zip(fg, truth)]
    assert _spearman(per_nucleus, [t.nuclear_radius_px for t in truth]) > 0.85
    # Very bright Hoechst (condensed mitotic chromatin) marks the mitotic class.
    bright = np.array([float((r.images[(1, 16)] >= 3500).mean()) for r in phenotype_renders])
    mitotic = np.array([t.phenotype_class == "mitotic" for t in truth])
    assert bright[mitotic].mean() > 2 * bright[~mitotic].mean()
    # The classes differ as designed.
    by_class = {c: [t for t in truth if t.phenotype_class == c] for c in PHENOTYPE_CLASSES}
    count = {c: np.mean([t.cell_count for t in ts]) for c, ts in by_class.items()}
    radius = {c: np.mean([t.nuclear_radius_px for t in ts]) for c, ts in by_class.items()}
    assert count["dense"] > count["control"] > count["sparse"]
    assert radius["sparse"] > radius["control"] > radius["dense"]
    assert np.mean([t.n_mitotic / t.cell_count for t in by_class["mitotic"]]) > 0.08


def test_both_channels_show_the_same_cells():
    r = render_site("A02", 1, channels=(1, 2), z_slices=(16,), noise=False)
    nuclei = r.images[(1, 16)] > 800
    # Nuclei sit on cells (w2 well above the empty gaps), and mostly away from the dark gaps.
    gap_level = np.percentile(r.images[(2, 16)], 2)
    assert np.mean(r.images[(2, 16)][nuclei] > gap_level + 300) > 0.97


def test_well_range():
    assert well_range("A01,a2, B03") == ("A01", "A02", "B03")
    assert well_range("A01:B02") == ("A01", "A02", "B01", "B02")
    assert well_range("b2:a1") == well_range("A01:B02")
    assert well_range("A01:B02,A02,C05") == ("A01", "A02", "B01", "B02", "C05")
    assert len(well_range("A01:P24")) == 384 and well_range("A01:P24")[-1] == "P24"
    for bad in ("", " , ", "Q01", "A25", "A00", "A01:B", "A01:B02:C03", "foo"):
        with pytest.raises(ConfigError):
            well_range(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"wells": ()},
        {"wells": ("Q01",)},
        {"wells": ("A25",)},
        {"wells": "A01:Z99"},
        {"sites": (3,)},
        {"sites": ()},
        {"channels": (0,)},
        {"z_slices": (34,)},
        {"z_slices": (-1,)},
        {"z_slices": ("16",)},
        {"seed": -1},
        {"seed": 1.5},
        {"plate": "my plate/1"},
    ],
)
def test_bad_config_is_a_config_error(kwargs, tmp_path):
    with pytest.raises(ConfigError):
        SyntheticConfig(**{"out_dir": tmp_path, "wells": ("A01",), **kwargs})


def test_config_normalises():
    c = SyntheticConfig("out", wells="a1,A01,b02", sites=(2, 1, 2), z_slices=(16, 0))
    assert c.out_dir == Path("out") and c.wells == ("A01", "B02") and c.sites == (2, 1)
    assert c.z_slices == (16, 0) and c.n_images == 2 * 2 * 2 * 2
    with pytest.raises(ConfigError):
        render_site("A01", 3)


def test_refuses_to_mix_seeds_in_one_folder(tmp_path):
    generate(SyntheticConfig(tmp_path, wells=("A01",), sites=(1,), channels=(1,), seed=0))
    generate(SyntheticConfig(tmp_path, wells=("A01",), sites=(1,), channels=(1,), seed=0))  # same: fine
    with pytest.raises(ConfigError, match="another seed"):
        generate(SyntheticConfig(tmp_path, wells=("A01",), sites=(1,), channels=(1,), seed=3))
    assert len(list(tmp_path.rglob("*.tif"))) == 1


def test_defocus_psf_is_a_growing_disk_that_flips_fine_contrast():
    # Issue 14: synthetic z-stacks follow a physical defocus model. Geometric optics (NA 0.45 in air,
    # 2 um slices, 0.645 um px): a disk of radius 1.56 px per slice above focus, 0.85 of that below.
    from indexer.bbbc006.synthetic import defocus_transfer

    assert defocus_radius(16) == 0.0
    assert defocus_radius(26) == pytest.approx(10 * 2.0 * np.tan(np.arcsin(0.45)) / 0.645)
    assert defocus_radius(6) == pytest.approx(0.85 * defocus_radius(26))
    shape = (256, 256)
    near, far = defocus_transfer(shape, 18), defocus_transfer(shape, 28)
    assert near[0, 0].real == pytest.approx(1.0) and far[0, 0].real == pytest.approx(1.0)  # keeps the light
    # Fine structure: a Gaussian only fades it; a defocus disk also reverses its contrast (negative lobes),
    # and more of the spectrum is lost the further from focus.
    assert far.real.min() < -0.05
    assert np.abs(far).mean() < np.abs(near).mean()
