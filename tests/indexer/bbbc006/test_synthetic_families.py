"""Phenotype families that differ only in morphology: the same stain per stained area in every class
and the classic camera background (measured on rendered images), different nuclear size/shape, actin
orientation/texture or clustering; deterministic per seed; the classic family (the default) renders
the same bytes as before."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage as ndi

from indexer.bbbc006.synthetic import (
    PHENOTYPE_CLASSES,
    PHENOTYPE_FAMILIES,
    SyntheticConfig,
    family_classes,
    generate,
    render_site,
    well_phenotype,
)
from indexer.core.errors import ConfigError

OFFSET = 200.0  # camera offset of the simulator


def _one_well_per_class(family: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for row in "ABCD":
        for col in range(1, 13):
            out.setdefault(well_phenotype(f"{row}{col:02d}", 0, family).phenotype_class, f"{row}{col:02d}")
    assert set(out) == set(family_classes(family))
    return out


@pytest.fixture(scope="module")
def renders() -> dict[str, dict[str, object]]:
    return {
        family: {
            k: render_site(w, 1, seed=0, channels=(1, 2), family=family)
            for k, w in _one_well_per_class(family).items()
        }
        for family in ("nuclear", "actin", "clustering")
    }


def _nuclei(site) -> tuple[np.ndarray, int]:
    """Nuclei as connected components of the smoothed Hoechst image above its 85th percentile."""
    d = site.images[(1, 16)].astype(float)
    return ndi.label(ndi.gaussian_filter(d, 1.0) > np.quantile(d, 0.85))


def test_classic_is_the_default_and_renders_the_same_bytes():
    assert PHENOTYPE_FAMILIES[0] == "classic" and family_classes("classic") == PHENOTYPE_CLASSES
    site = render_site("B05", 2, seed=3, channels=(1, 2))
    digests = {k: hashlib.sha256(v.tobytes()).hexdigest()[:16] for k, v in site.images.items()}
    # Recorded before the families were added: existing data sets and shipped examples do not change.
    assert digests == {(1, 16): "616c6c1fbfe203f0", (2, 16): "ec5367443df65830"}
    assert SyntheticConfig("x", wells=("A01",)).family == "classic"


def _masks(family: str, well: str) -> dict[int, np.ndarray]:
    """Where each stain lives in site 1 of ``well`` under seed 0: nuclei (Hoechst), cells (phalloidin)."""
    from indexer.bbbc006.synthetic.render import _stain_site
    from indexer.bbbc006.synthetic.spec import _STREAM_SITE, _rng, _well_index

    ph = well_phenotype(well, 0, family)
    row, col = _well_index(well)
    return _stain_site(ph, _rng(0, _STREAM_SITE, row, col, 1)).compartment


def _dark(image: np.ndarray, confluence: float) -> dict[str, float]:
    """The 1st and 5th percentiles, and the median of the pixels outside the cells (the darkest
    ``1 - confluence`` of the image)."""
    return {
        "p1": float(np.percentile(image, 1)),
        "p5": float(np.percentile(image, 5)),
        "gap": float(np.percentile(image, 50.0 * (1.0 - confluence))),
    }


@pytest.fixture(scope="module")
def classic_dark() -> dict[str, dict[int, dict[str, float]]]:
    sites = {k: render_site(w, 1, seed=0, channels=(1, 2)) for k, w in _one_well_per_class("classic").items()}
    return {k: {c: _dark(s.images[(c, 16)], s.truth.confluence) for c in (1, 2)} for k, s in sites.items()}


@pytest.mark.parametrize("family", ["nuclear", "actin", "clustering"])
def test_family_backgrounds_are_the_classic_camera_background(renders, classic_dark, family):
    # Before, each site was rank-mapped onto the family's reference histogram, which lifted the gaps of
    # a clustering-tight field to 1,400-2,000 ADU; now the gaps sit at the camera offset plus the same
    # faint glow as in classic images.
    for k, site in renders[family].items():
        # Hoechst: the space between nuclei is dark in every class and family.
        dark = _dark(site.images[(1, 16)], site.truth.confluence)
        for stat, value in dark.items():
            ref = [d[1][stat] for d in classic_dark.values()]
            assert min(ref) - 6 <= value <= max(ref) + 6, (k, 1, stat, value, ref)
        # Phalloidin: a field with wide gaps looks like the classic sparse field (a third of it empty).
        if site.truth.confluence < 0.8:
            dark = _dark(site.images[(2, 16)], site.truth.confluence)
            for stat, value in dark.items():
                assert abs(value - classic_dark["sparse"][2][stat]) < 15, (k, 2, stat, value)


@pytest.mark.parametrize("family", ["nuclear", "actin", "clustering"])
def test_classes_of_a_family_hold_the_same_stain_per_stained_area(renders, family):
    # The stain amount (mean signal over the nuclei for Hoechst, over the cells for phalloidin,
    # measured on the camera image) is the reference class's times the well's brightness in every class.
    wells = _one_well_per_class(family)
    for channel in (1, 2):
        amount = []
        for k, site in renders[family].items():
            counts = site.images[(channel, 16)].astype(float) - OFFSET
            amount.append(counts[_masks(family, wells[k])[channel]].mean() / site.truth.intensity_scale)
        assert max(amount) / min(amount) < 1.07, (family, channel, amount)
    # In the classic family even the mean brightness of the field differs between classes by over 20 %.
    classic = [render_site(w, 1, seed=0, channels=(2,)) for w in _one_well_per_class("classic").values()]
    m = [((s.images[(2, 16)].astype(float) - OFFSET) / s.truth.intensity_scale).mean() for s in classic]
    assert max(m) / min(m) > 1.2


def test_nuclear_family_differs_in_size_and_shape(renders):
    area, elongation = {}, {}
    for k, site in renders["nuclear"].items():
        labels, n = _nuclei(site)
        area[k] = float(np.median(np.bincount(labels.ravel())[1:]))
        ratios = []
        for sl, i in zip(ndi.find_objects(labels), range(1, n + 1)):
            ys, xs = np.nonzero(labels[sl] == i)
            if ys.size >= 20:
                ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(float)))
                ratios.append(np.sqrt(ev[1] / max(ev[0], 1e-9)))
        elongation[k] = float(np.median(ratios))
    assert area["nuclear-large"] > 2.5 * area["nuclear-small"]
    assert elongation["nuclear-elongated"] > 1.5 * max(
        elongation["nuclear-small"], elongation["nuclear-large"]
    )


def test_actin_family_differs_in_orientation_and_fibre_texture(renders):
    coherence, fine = {}, {}
    for k, site in renders["actin"].items():
        a = site.images[(2, 16)].astype(float)
        gy, gx = np.gradient(ndi.gaussian_filter(a, 1.0))
        # Global orientation coherence of the gradients: 1 = every edge along one direction.
        coherence[k] = float(
            np.hypot((gx * gx - gy * gy).sum(), 2 * (gx * gy).sum()) / (gx * gx + gy * gy).sum()
        )
        # Share of the variance in fine structure (stress fibres are thin lines).
        fine[k] = float((a - ndi.gaussian_filter(a, 2.0)).std() / a.std())
    assert coherence["actin-aligned"] > 5 * max(coherence["actin-random"], coherence["actin-cortical"])
    assert fine["actin-random"] > 1.2 * fine["actin-cortical"]


def test_clustering_family_differs_in_empty_space(renders):
    empty = {}
    for k, site in renders["clustering"].items():
        labels, _ = _nuclei(site)
        blocks = (labels > 0)[:520, :680].reshape(13, 40, 17, 40).any(axis=(1, 3))
        empty[k] = float(1.0 - blocks.mean())  # 40x40 px blocks without a nucleus
    assert empty["clustering-tight"] > empty["clustering-colonies"] > empty["clustering-dispersed"]
    assert empty["clustering-tight"] > 1.6 * empty["clustering-dispersed"]


def test_families_are_deterministic_per_seed_and_chosen_by_the_cli(tmp_path):
    from indexer.cli import main as cli_main

    a = render_site("C07", 2, seed=5, channels=(2,), family="actin").images[(2, 16)]
    b = render_site("C07", 2, seed=5, channels=(2,), family="actin").images[(2, 16)]
    c = render_site("C07", 2, seed=6, channels=(2,), family="actin").images[(2, 16)]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    result = CliRunner().invoke(cli_main, ["synth", str(tmp_path / "s"), "--wells", "A01:A03", "--sites", "1",
                                           "--channels", "1", "--family", "nuclear"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "s" / "BBBC006_synthetic_ground_truth.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 and all(",nuclear-" in r for r in rows)
    assert (
        generate(
            SyntheticConfig(tmp_path / "t", wells=("A01",), sites=(1,), channels=(1,), family="nuclear")
        ).n_images
        == 1
    )
    with pytest.raises(ConfigError, match="phenotype family"):
        SyntheticConfig(tmp_path, wells=("A01",), family="shape")
    bad = CliRunner().invoke(cli_main, ["synth", str(tmp_path / "u"), "--family", "shape"])
    assert bad.exit_code == 2
