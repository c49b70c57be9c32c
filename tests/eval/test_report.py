"""Report presentation: labelled axes, severity and |dz| on separate x axes, chance lines, headline table."""

import matplotlib

matplotlib.use("Agg")

from eval import figures, report  # noqa: E402
from eval.summary import summarise  # noqa: E402


def _rows():
    rows = []
    for q in range(6):
        for sev in (0, 3, 5):
            rows.append({"query_id": q, "perturbation": "gaussian_blur", "severity": sev, "value": float(sev),
                         "identity": sev == 0, "candidates": 28, "self_candidates": 29,
                         "self_at_1": float(sev == 0 or q % 2), "overlap_at_k": 1 - sev / 10 - q / 50,
                         "rbo": 1 - sev / 8 - q / 60, "drift_normalised": sev * 2.0 + q})  # fmt: skip
        for dz in (3, 8):
            rows.append({"query_id": q, "perturbation": "defocus_z", "severity": dz, "value": 2.0 * dz,
                         "candidates": 27, "self_candidates": 28, "self_at_1": float(q % 3 == 0),
                         "overlap_at_k": 0.6 - q / 40, "rbo": 0.5 - q / 50, "drift_normalised": dz + q})  # fmt: skip
    rows.append({"query_id": 0, "perturbation": "defocus_z", "severity": 15, "value": 30.0, "candidates": 27,
                 "self_candidates": 28, "self_at_1": 1.0, "overlap_at_k": 0.3, "rbo": 0.2,
                 "drift_normalised": 20.0})  # fmt: skip
    return rows


def test_curves_have_labelled_axes_and_chance_lines():
    s = summarise(_rows(), metrics=("self_at_1", "overlap_at_k", "rbo", "drift_normalised"), k=10)
    fig = figures.curves_figure(s, ["gaussian_blur", "defocus_z"])
    for ax in fig.axes:
        assert ax.get_ylabel() and "severity" in ax.get_xlabel() and "dz" not in ax.get_xlabel()
        # defocus is not drawn on the severity axis
        assert all(line.get_label() != "defocus_z" for line in ax.get_lines())
    # a dashed chance line beside each score curve (not for drift)
    assert any(line.get_linestyle() == "--" for line in fig.axes[1].get_lines())
    dfig = figures.defocus_figure(s)
    ax = dfig.axes[0]
    assert "|dz|" in ax.get_xlabel() and "um" in ax.get_xlabel() and ax.get_ylabel()
    assert any(line.get_linestyle() == "--" for line in ax.get_lines())


def test_defocus_panels_are_labelled_by_provenance():
    rows = [
        {**r, "source": "synthetic", "curve": "synthetic"}
        for r in _rows()
        if r["perturbation"] == "defocus_z"
    ]
    rows += [{**r, "query_id": r["query_id"] + 100, "source": "real", "curve": "real"} for r in rows]
    s = summarise(rows, metrics=report.HEADLINE, k=10)
    titles = [ax.get_title() for ax in figures.defocus_figure(s).axes]
    assert titles[0].startswith("Defocus, real z-stacks") and titles[1].startswith(
        "Defocus, synthetic z-stacks"
    )
    labels = [r["perturbation"] for r in report.headline_rows(s)]
    assert labels == ["defocus_z (real)", "defocus_z (synthetic)"]


def test_headline_table_states_n_gallery_chance_and_marks_small_groups():
    s = summarise(_rows(), metrics=report.HEADLINE + ("self_rank",), k=10)
    head = report.headline_rows(s)
    table = report.format_table(head, report.TABLE_COLUMNS)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["perturbation", "severity", "n", "gallery"] and "rbo_chance" in lines[0]
    defocus = next(line for line in lines if line.startswith("defocus_z"))
    assert " 1* " in defocus and " 27 " in defocus  # one query at |dz| = 15: marked; 27 candidates
    assert lines[-1].startswith("* fewer than 5 queries")
    blur = next(line for line in lines if line.startswith("gaussian_blur"))
    assert "[" in blur and " 6 " in blur


def test_an_unbounded_interval_prints_instead_of_crashing():
    """One query's drift/NN ratio has no finite upper bound (its range is [0, inf)): the JSON keeps
    ``None`` for it and the table must still print (the quick-start report crashed on it)."""
    row = {"perturbation": "defocus_z (synthetic)", "severity": 8, "n": 1, "small_n": True,
           "drift_normalised": 2.112945, "drift_normalised_low": 0.052824, "drift_normalised_high": None}  # fmt: skip
    table = report.format_table([row], ("perturbation", "n", "drift_normalised"))
    assert "2.113 [0.053, inf]" in table and "1*" in table


def test_the_example_figure_draws_its_images_at_display_size_not_full_resolution():
    """The figure of one query under each perturbation is 1.7 x 1.5 inches per panel at 100 dpi, yet it
    drew each 696 x 520 image in float64 at full size: ~100 MB for 7 perturbations x 6 severities, the
    peak of a whole ``mae-eval`` run at 52,224 images (tracemalloc). Panels are now block-averaged to
    twice their display size, in float32."""
    import io
    import tracemalloc
    from types import SimpleNamespace

    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4095, size=(520, 696), dtype=np.uint16)
    examples = {(name, sev): image for name in "abcdefg" for sev in range(6)}
    tracemalloc.start()
    fig = figures.examples_figure(SimpleNamespace(examples=examples))
    fig.savefig(io.BytesIO(), format="png", dpi=100)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    plt.close(fig)
    shown = [im.get_array() for ax in fig.axes for im in ax.get_images()]
    assert len(shown) == 42 and all(a.shape == (260, 348) and a.dtype == np.float32 for a in shown)
    assert peak < 30 * 2**20, f"{peak / 2**20:.0f} MB"
